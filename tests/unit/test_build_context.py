"""Unit tests of .dockerignore matching and context source lookup."""

from kakoi.build.context import Context, hash_tree, parse_ignore


def ignored(patterns: str, path: str) -> bool:
    return Context(None, parse_ignore(patterns)).ignored(path)


def test_ignore_plain_and_comment():
    assert ignored("# note\nsecret.txt\n", "secret.txt")
    assert not ignored("# secret.txt\n", "secret.txt")


def test_ignore_leading_and_trailing_slash():
    assert ignored("/build/\n", "build/out.o")
    assert ignored("/build\n", "build")


def test_ignore_star_stays_in_directory():
    assert ignored("*.log\n", "a.log")
    assert not ignored("*.log\n", "dir/a.log")


def test_ignore_double_star():
    assert ignored("**/*.log\n", "dir/sub/a.log")
    assert ignored("**/*.log\n", "a.log")


def test_ignore_exception_last_wins():
    assert not ignored("*.md\n!README.md\n", "README.md")
    assert ignored("*.md\n!README.md\n", "CHANGES.md")
    assert ignored("!README.md\n*.md\n", "README.md")


def test_ignore_directory_excludes_below():
    assert ignored("docs\n", "docs/a/b.txt")


def test_resolve_rejects_escape(tmp_path):
    context = Context(str(tmp_path))
    assert context.resolve("../outside") is None
    assert context.resolve("a/../../outside") is None
    assert context.resolve("a/../b")[0] == "b"


def test_resolve_rejects_symlinked_parent(tmp_path):
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "out").symlink_to(tmp_path)
    context = Context(str(tmp_path / "ctx"))
    assert context.resolve("out/file") is None


def test_hash_tree_ignores_mtime(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    before = hash_tree([("f", str(path))])
    import os

    os.utime(path, (1, 1))
    assert hash_tree([("f", str(path))]) == before
    path.write_text("y")
    assert hash_tree([("f", str(path))]) != before
