"""remove_tree on trees that shutil.rmtree cannot remove: deep nesting, symlinks out."""

import os

from kakoi.kernel.tree import remove_tree


def make_deep_tree(top, depth: int) -> None:
    """Nest `depth` directories under top, relative to open fds (paths pass PATH_MAX)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for level in range(depth):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
        if level % 500 == 0:
            os.close(os.open("file", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
    os.close(fd)


def test_removes_very_deep_tree(tmp_path):
    top = tmp_path / "top"
    top.mkdir()
    make_deep_tree(top, 2500)

    remove_tree(str(top))

    assert not top.exists()


def test_symlinks_are_removed_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary").write_text("canary")
    top = tmp_path / "top"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "link").symlink_to(outside)
    (top / "a" / "b" / "file").write_text("x")
    for number in range(30):
        (top / f"wide{number}" / "x").mkdir(parents=True)

    remove_tree(str(top))

    assert not top.exists()
    assert (outside / "canary").read_text() == "canary"


def test_missing_directory_is_not_an_error(tmp_path):
    remove_tree(str(tmp_path / "absent"))
