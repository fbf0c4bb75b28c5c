"""Manifest media types, size limits and platform selection from an index."""

import json

import pytest

from kakoi.errors import InvalidArgument
from kakoi.registry import manifest
from kakoi.registry.errors import ManifestError
from kakoi.registry.manifest import Platform

DIGEST = "sha256:" + "a" * 64


def entry(architecture, variant=None, os="linux", media_type=manifest.MEDIA_OCI_MANIFEST,
          digest=None):
    platform = {"os": os, "architecture": architecture}
    if variant:
        platform["variant"] = variant
    return {"mediaType": media_type, "size": 10, "platform": platform,
            "digest": digest or "sha256:" + (architecture + (variant or "")).encode().hex()
            .ljust(64, "0")[:64]}


def index(*entries):
    return json.dumps({"schemaVersion": 2, "mediaType": manifest.MEDIA_OCI_INDEX,
                       "manifests": list(entries)}).encode()


MULTI = index(entry("amd64"), entry("arm", "v6"), entry("arm", "v7"), entry("arm64", "v8"),
              entry("unknown", os="unknown"))


@pytest.mark.parametrize("text,expected", [
    ("linux/amd64", Platform("linux", "amd64")),
    ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
    ("linux/x86_64", Platform("linux", "amd64")),
    ("Linux/AARCH64", Platform("linux", "arm64")),
])
def test_parse_platform(text, expected):
    assert manifest.parse_platform(text) == expected


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "a/b/c/d"])
def test_parse_platform_invalid(text):
    with pytest.raises(InvalidArgument, match="invalid platform"):
        manifest.parse_platform(text)


def test_select_architecture():
    chosen = manifest.select_platform(MULTI, Platform("linux", "amd64"), "img")
    assert chosen.platform == Platform("linux", "amd64")


def test_select_variant():
    chosen = manifest.select_platform(MULTI, Platform("linux", "arm", "v7"), "img")
    assert chosen.platform == Platform("linux", "arm", "v7")


def test_select_arm64_default_variant():
    body = index(entry("amd64"), entry("arm64"))
    chosen = manifest.select_platform(body, Platform("linux", "arm64", "v8"), "img")
    assert chosen.platform == Platform("linux", "arm64")


def test_select_without_variant_prefers_plain():
    body = index(entry("arm64", "v9"), entry("arm64"))
    chosen = manifest.select_platform(body, Platform("linux", "arm64"), "img")
    assert chosen.platform.variant is None


def test_select_unknown_platform_lists_available():
    with pytest.raises(ManifestError) as caught:
        manifest.select_platform(MULTI, Platform("linux", "s390x"), "img")
    message = str(caught.value)
    assert "no manifest for platform linux/s390x in img" in message
    assert "linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64/v8" in message
    assert "unknown" not in message


def test_select_skips_attestations():
    body = index(entry("unknown", os="unknown"), entry("amd64"))
    chosen = manifest.select_platform(body, Platform("linux", "amd64"), "img")
    assert chosen.platform.architecture == "amd64"


def test_media_type_from_body_and_header():
    body = json.dumps({"schemaVersion": 2, "config": {}, "layers": []}).encode()
    assert manifest.media_type_of(body, manifest.MEDIA_DOCKER_MANIFEST) == \
        manifest.MEDIA_DOCKER_MANIFEST
    assert manifest.media_type_of(body, None) == manifest.MEDIA_OCI_MANIFEST
    assert manifest.media_type_of(index(), "application/json") == manifest.MEDIA_OCI_INDEX


def test_schema1_rejected():
    body = json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode()
    with pytest.raises(ManifestError, match="schema 1"):
        manifest.media_type_of(body, "application/vnd.docker.distribution.manifest.v1+prettyjws")


def test_unknown_media_type_rejected():
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.example+json"}).encode()
    with pytest.raises(ManifestError, match="unsupported manifest media type"):
        manifest.media_type_of(body, None)


def test_invalid_json_rejected():
    with pytest.raises(ManifestError, match="not valid JSON"):
        manifest.media_type_of(b"{", None)


def test_size_limit():
    manifest.check_size(manifest.MAX_MANIFEST_SIZE, "manifest")
    with pytest.raises(ManifestError, match="4 MiB"):
        manifest.check_size(manifest.MAX_MANIFEST_SIZE + 1, "manifest")


def image_manifest(layer_type="application/vnd.oci.image.layer.v1.tar+gzip",
                   config_type=manifest.MEDIA_OCI_CONFIG, digest=DIGEST):
    return json.dumps({"schemaVersion": 2, "mediaType": manifest.MEDIA_OCI_MANIFEST,
                       "config": {"mediaType": config_type, "digest": DIGEST, "size": 2},
                       "layers": [{"mediaType": layer_type, "digest": digest,
                                   "size": 5}]}).encode()


@pytest.mark.parametrize("layer_type,compression", [
    ("application/vnd.oci.image.layer.v1.tar+gzip", "gzip"),
    ("application/vnd.oci.image.layer.v1.tar+zstd", "zstd"),
    ("application/vnd.oci.image.layer.v1.tar", "none"),
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", "gzip"),
])
def test_layer_media_types(layer_type, compression):
    parsed = manifest.parse_manifest(image_manifest(layer_type), manifest.MEDIA_OCI_MANIFEST)
    assert manifest.LAYER_COMPRESSION[parsed.layers[0].media_type] == compression


def test_unknown_layer_type_rejected():
    with pytest.raises(ManifestError, match="unsupported layer media type"):
        manifest.parse_manifest(image_manifest("application/x-foo"), manifest.MEDIA_OCI_MANIFEST)


def test_artifact_config_rejected():
    with pytest.raises(ManifestError, match="unsupported config media type"):
        manifest.parse_manifest(image_manifest(config_type="application/vnd.cncf.helm.config"),
                                manifest.MEDIA_OCI_MANIFEST)


def test_non_sha256_digest_rejected():
    with pytest.raises(ManifestError, match="sha256"):
        manifest.parse_manifest(image_manifest(digest="sha512:" + "a" * 128),
                                manifest.MEDIA_OCI_MANIFEST)
