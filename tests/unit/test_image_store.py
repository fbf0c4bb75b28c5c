"""The image store: load, save, names, removal and garbage collection, on real archives."""

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from image_helpers import file_entry, store_listing, tar_bytes, write_image
from kakoi.errors import DigestMismatchError, ImageError, ImageInUse, ImageNotFound
from kakoi.image import digest as digests
from kakoi.image.store import Store

pytestmark = pytest.mark.root

BASE = tar_bytes([file_entry("base", b"base layer")])
TOP_A = tar_bytes([file_entry("a", b"a")])
TOP_B = tar_bytes([file_entry("b", b"b")])


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "store")
    store.ensure_layout()
    return store


def config_digest_of(archive_path):
    with tarfile.open(archive_path) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))
        return digests.of_bytes(archive.extractfile(manifest[0]["Config"]).read())


@pytest.mark.parametrize("format", ["docker-archive", "oci-archive"])
def test_load_busybox_archive(store, busybox_archives, format):
    loaded = store.load(busybox_archives[format])

    record = store.resolve("busybox")
    assert [image.names for image in loaded] == [["docker.io/library/busybox:latest"]]
    assert record.id == config_digest_of(busybox_archives["docker-archive"])
    diff = Path(store.layer_dirs(record)[0])
    assert (diff / "bin/busybox").stat().st_mode & 0o111
    assert os.readlink(diff / "bin/sh") == "/bin/busybox"
    assert "app:x:1000:1000" in (diff / "etc/passwd").read_text()
    assert (diff / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert store.config(record)["config"]["Cmd"] == ["sh"]


def test_load_from_stream_spools(store, busybox_archives):
    with open(busybox_archives["oci-archive"], "rb") as stream:
        store.load(stream)

    assert store.resolve("busybox:latest").names == ["docker.io/library/busybox:latest"]
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("format", ["docker-archive", "oci-archive"])
def test_save_load_round_trip(store, busybox_archives, tmp_path, format):
    store.load(busybox_archives["docker-archive"])
    original = store.resolve("busybox")
    out = tmp_path / f"saved-{format}.tar"

    store.save(["busybox"], out, format)
    other = Store(tmp_path / "other")
    other.load(out)

    copy = other.resolve("busybox")
    assert copy.id == original.id
    assert [layer.diff_id for layer in copy.layers] == [l.diff_id for l in original.layers]
    if format == "oci-archive":
        assert copy.manifest_digest == original.manifest_digest
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".saved")] == []


def test_save_to_stream(store, busybox_archives):
    store.load(busybox_archives["docker-archive"])
    out = io.BytesIO()

    store.save(["busybox"], out, "docker-archive")

    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))
    assert manifest[0]["RepoTags"] == ["busybox:latest"]


def test_save_unknown_image_leaves_no_output(store, tmp_path):
    out = tmp_path / "out.tar"

    with pytest.raises(ImageNotFound):
        store.save(["nothing-here"], out)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_layers_shared_between_images(store, tmp_path):
    write_image(tmp_path / "a.tar", [BASE, TOP_A], "test/a")
    write_image(tmp_path / "b.tar", [BASE, TOP_B], "test/b")

    store.load(tmp_path / "a.tar")
    base_dir = store.layer_dirs("test/a")[0]
    inode = os.stat(base_dir).st_ino
    store.load(tmp_path / "b.tar")

    assert store.layer_dirs("test/b")[0] == base_dir
    assert os.stat(base_dir).st_ino == inode
    assert len(list(store.layers_dir.iterdir())) == 3


def test_chain_id_names_layer_dir(store, tmp_path):
    write_image(tmp_path / "a.tar", [BASE, TOP_A], "test/a")
    store.load(tmp_path / "a.tar")

    chain = digests.chain_ids([digests.of_bytes(BASE), digests.of_bytes(TOP_A)])
    assert store.layer_dirs("test/a") == [str(store.layers_dir / c[7:] / "diff") for c in chain]


def test_index_stores_chain_ids(store, tmp_path):
    write_image(tmp_path / "a.tar", [BASE, TOP_A], "test/a")
    store.load(tmp_path / "a.tar")

    chain = digests.chain_ids([digests.of_bytes(BASE), digests.of_bytes(TOP_A)])
    index = json.loads(store.index_path.read_text())
    [record] = index["images"].values()
    assert [layer["chain_id"] for layer in record["layers"]] == chain


def test_index_without_chain_ids_still_resolves(store, tmp_path):
    write_image(tmp_path / "a.tar", [BASE, TOP_A], "test/a")
    store.load(tmp_path / "a.tar")
    expected = store.layer_dirs("test/a")

    # An index written before chain ids were stored has no chain_id keys.
    index = json.loads(store.index_path.read_text())
    for record in index["images"].values():
        for layer in record["layers"]:
            del layer["chain_id"]
    store.index_path.write_text(json.dumps(index))

    assert store.layer_dirs("test/a") == expected


# Bad input leaves the store unchanged


@pytest.fixture
def populated(store, tmp_path):
    """A store with one image, whose listing later tests compare."""
    write_image(tmp_path / "base.tar", [BASE], "test/base")
    store.load(tmp_path / "base.tar")
    return store


def assert_load_fails_cleanly(store, path, error, match):
    before = store_listing(store.root)
    with pytest.raises(error, match=match):
        store.load(path)
    assert store_listing(store.root) == before


def test_load_not_a_tar(populated, tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"this is not a tar archive\n" * 40)

    assert_load_fails_cleanly(populated, path, ImageError,
                              "is not an image archive: it is not a tar file")


def test_load_tar_that_is_not_an_image(populated, tmp_path):
    path = tmp_path / "plain.tar"
    path.write_bytes(tar_bytes([file_entry("hello.txt", b"hi")]))

    assert_load_fails_cleanly(populated, path, ImageError, "is not an image archive")


def test_load_corrupt_oci_blob(populated, tmp_path):
    path = tmp_path / "image.tar"
    write_image(path, [BASE, TOP_A], "test/corrupt", format="oci-archive")
    data = bytearray(path.read_bytes())
    offset = data.index(b"a" * 1 + b"\0" * 100)  # the content of file "a" in TOP_A
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))

    assert_load_fails_cleanly(populated, path, DigestMismatchError, "hashes to")


def test_load_corrupt_docker_layer(populated, tmp_path):
    path = tmp_path / "image.tar"
    write_image(path, [BASE, TOP_A], "test/corrupt")
    data = bytearray(path.read_bytes())
    offset = data.index(b"a" + b"\0" * 100)
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))

    assert_load_fails_cleanly(populated, path, DigestMismatchError, "diff_id")


def test_load_diff_id_mismatch(populated, tmp_path):
    path = tmp_path / "image.tar"
    wrong = [digests.of_bytes(BASE), digests.of_bytes(b"something else")]
    write_image(path, [BASE, TOP_A], "test/mismatch", diff_ids=wrong)

    assert_load_fails_cleanly(populated, path, DigestMismatchError, "diff_id")


def test_load_layer_count_mismatch(populated, tmp_path):
    path = tmp_path / "image.tar"
    write_image(path, [TOP_A], "test/mismatch", diff_ids=[digests.of_bytes(TOP_A)] * 2)

    assert_load_fails_cleanly(populated, path, ImageError, "diff_ids")


def test_load_escaping_layer(populated, tmp_path):
    path = tmp_path / "image.tar"
    write_image(path, [BASE, tar_bytes([file_entry("../escape", b"x")])], "test/escape")

    from kakoi.errors import LayerEscapeError

    assert_load_fails_cleanly(populated, path, LayerEscapeError, "escape")
    assert not (populated.root.parent / "escape").exists()


# Names and removal


def test_resolve_by_id_prefix(populated):
    record = populated.resolve("test/base")

    assert populated.resolve(record.id[7:11]).id == record.id
    assert populated.resolve(record.id).id == record.id
    assert populated.resolve(record.id[7:]).id == record.id


def test_resolve_short_prefix_not_found(populated):
    record = populated.resolve("test/base")

    with pytest.raises(ImageNotFound, match="no such image"):
        populated.resolve(record.id[7:10])


def test_tag_and_untag(populated):
    populated.tag("test/base", "other:1")

    record = populated.resolve("other:1")
    assert record.names == ["docker.io/test/base:latest", "docker.io/library/other:1"]
    assert populated.remove("other:1") == ["Untagged: other:1"]
    assert populated.resolve("test/base").id == record.id


def test_remove_last_name_deletes_and_collects(populated, tmp_path):
    write_image(tmp_path / "a.tar", [BASE, TOP_A], "test/a")
    populated.load(tmp_path / "a.tar")
    record = populated.resolve("test/a")
    top_dir = Path(populated.layer_dirs(record)[1]).parent
    base_dir = Path(populated.layer_dirs(record)[0]).parent

    lines = populated.remove("test/a")

    assert lines == ["Untagged: test/a:latest", f"Deleted: {record.id}"]
    assert not top_dir.exists()
    assert base_dir.exists()
    assert not populated.blob_path(record.id).exists()
    assert not populated.blob_path(record.layers[1].digest).exists()
    assert populated.blob_path(record.layers[0].digest).exists()
    with pytest.raises(ImageNotFound):
        populated.resolve("test/a")


def test_remove_by_id_with_several_names_needs_force(populated):
    populated.tag("test/base", "other:1")
    record = populated.resolve("test/base")

    with pytest.raises(ImageError, match="referenced by 2 names"):
        populated.remove(record.id[7:19])
    lines = populated.remove(record.id[7:19], force=True)

    assert lines[-1] == f"Deleted: {record.id}"
    assert populated.list() == []
    assert list(populated.layers_dir.iterdir()) == []
    assert list(populated.blobs_dir.iterdir()) == []


def test_remove_in_use_rejected(populated):
    record = populated.resolve("test/base")

    with pytest.raises(ImageInUse, match="web, db"):
        populated.remove("test/base", in_use={record.id: ["web", "db"]})

    assert populated.resolve("test/base").id == record.id


def test_remove_in_use_forced_only_untags(populated):
    record = populated.resolve("test/base")

    lines = populated.remove("test/base", force=True, in_use={record.id: ["web"]})

    assert lines == ["Untagged: test/base:latest"]
    assert populated.resolve(record.id).names == []
    assert os.path.isdir(populated.layer_dirs(record)[0])


def test_load_moves_name_from_older_image(populated, tmp_path):
    old = populated.resolve("test/base")
    write_image(tmp_path / "new.tar", [TOP_A], "test/base")

    populated.load(tmp_path / "new.tar")

    assert populated.resolve("test/base").id != old.id
    assert populated.resolve(old.id).names == []


def test_inspect_shape(populated):
    info = populated.inspect("test/base")

    assert info["Id"] == populated.resolve("test/base").id
    assert info["RepoTags"] == ["test/base:latest"]
    assert info["RepoDigests"][0].startswith("test/base@sha256:")
    assert info["RootFS"] == {"Type": "layers", "Layers": [digests.of_bytes(BASE)]}
    assert info["Os"] == "linux"
    assert info["Size"] == len(b"base layer")
    assert info["Config"] == {"Cmd": ["sh"]}


def test_reload_same_image_keeps_store_clean(store, busybox_archives):
    store.load(busybox_archives["docker-archive"])
    before = sorted(p.name for p in store.blobs_dir.iterdir())

    store.load(busybox_archives["oci-archive"])

    assert sorted(p.name for p in store.blobs_dir.iterdir()) == before


def test_sweep_removes_work_of_dead_process(tmp_path):
    import os

    store = Store(tmp_path / "store")
    pid = os.fork()
    if pid == 0:
        store.new_layer_work()
        os._exit(0)  # dies holding nothing: its flock went with it
    os.waitpid(pid, 0)
    live = store.new_layer_work()
    left = sorted(name for name in os.listdir(store.tmp_dir) if not name.endswith(".lock"))
    assert len(left) == 2

    store.sweep_stale_work()

    remaining = sorted(name for name in os.listdir(store.tmp_dir) if not name.endswith(".lock"))
    assert remaining == [live.name]
    store.discard_layer_work(live)
    assert os.listdir(store.tmp_dir) == []
