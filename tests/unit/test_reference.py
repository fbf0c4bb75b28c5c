"""Image reference parsing and normalization, compared with what Docker prints."""

import pytest

from kakoi.errors import InvalidArgument
from kakoi.image.reference import parse

HEX = "a" * 64

VALID = [
    # text, full form, familiar form
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("user/app:v1", "docker.io/user/app:v1", "user/app:v1"),
    ("library/a/b", "docker.io/library/a/b:latest", "library/a/b:latest"),
    ("ghcr.io/org/tool:2.0", "ghcr.io/org/tool:2.0", "ghcr.io/org/tool:2.0"),
    ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
    ("localhost:5000/app:dev", "localhost:5000/app:dev", "localhost:5000/app:dev"),
    ("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:latest", "127.0.0.1:5000/a/b:latest"),
    ("[::1]:5000/app", "[::1]:5000/app:latest", "[::1]:5000/app:latest"),
    ("my-reg.example.com/a_b/c--d/e.f:Tag_1.0-x",
     "my-reg.example.com/a_b/c--d/e.f:Tag_1.0-x", "my-reg.example.com/a_b/c--d/e.f:Tag_1.0-x"),
    (f"busybox@sha256:{HEX}", f"docker.io/library/busybox@sha256:{HEX}",
     f"busybox@sha256:{HEX}"),
    (f"busybox:1@sha256:{HEX}", f"docker.io/library/busybox:1@sha256:{HEX}",
     f"busybox:1@sha256:{HEX}"),
    (f"localhost:5000/app@sha256:{HEX}", f"localhost:5000/app@sha256:{HEX}",
     f"localhost:5000/app@sha256:{HEX}"),
]

INVALID = [
    "",
    "Busybox",
    "user/App",
    "busybox:",
    "busybox:-tag",
    "busybox:" + "t" * 129,
    ":latest",
    "/busybox",
    "busybox/",
    "a//b",
    "a..b",
    "-a",
    "a-",
    "busy box",
    "busybox@sha256:abc",
    f"busybox@sha256:{'A' * 64}",
    f"busybox@sha512:{'a' * 128}",
    "busybox@",
    HEX,
    "localhost:abc/app",
    "example.com/" + "a" * 250,
]


@pytest.mark.parametrize("text,full,familiar", VALID)
def test_reference_valid(text, full, familiar):
    reference = parse(text)

    assert str(reference) == full
    assert reference.familiar() == familiar


@pytest.mark.parametrize("text", INVALID)
def test_reference_invalid(text):
    with pytest.raises(InvalidArgument, match="^invalid reference format: "):
        parse(text)


def test_reference_fields():
    reference = parse("localhost:5000/team/app:v2")

    assert reference.domain == "localhost:5000"
    assert reference.path == "team/app"
    assert reference.tag == "v2"
    assert reference.digest is None


def test_reference_digest_without_default_tag():
    reference = parse(f"busybox@sha256:{HEX}")

    assert reference.tag is None
    assert reference.digest == f"sha256:{HEX}"


def test_reference_uppercase_message():
    with pytest.raises(InvalidArgument, match="must be lowercase"):
        parse("Busybox")


def test_reference_uppercase_first_component_is_domain():
    # Docker reads an uppercase first component as a domain, as hostnames are case-insensitive.
    reference = parse("Example/app")

    assert reference.domain == "Example"
    assert reference.path == "app"
