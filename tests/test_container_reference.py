"""--docker-uri parsing: daemon names (nitro-cli's :latest rule) and skopeo's transports;
anything else is one ContainerError line."""
import pytest
from hypothesis import given, strategies as st

from nitro_emu.container.errors import ContainerError
from nitro_emu.container.reference import parse_reference


@pytest.mark.parametrize("uri, transport, path, name, image_name", [
    ("app", "docker-daemon", "", "app:latest", "app"),
    ("app:1.0", "docker-daemon", "", "app:1.0", "app"),
    ("localhost:5000/team/app", "docker-daemon", "", "localhost:5000/team/app:latest", "localhost"),
    ("public.ecr.aws/aws-nitro-enclaves/hello:v1", "docker-daemon", "",
     "public.ecr.aws/aws-nitro-enclaves/hello:v1", "public.ecr.aws/aws-nitro-enclaves/hello"),
    ("app@sha256:" + "a" * 64, "docker-daemon", "", "app@sha256:" + "a" * 64, "app@sha256"),
    ("docker-daemon:app", "docker-daemon", "", "app:latest", "app"),
    ("docker-archive:/tmp/app.tar", "docker-archive", "/tmp/app.tar", "", "app"),
    ("docker-archive:app.tar:web:2", "docker-archive", "app.tar", "web:2", "web"),
    ("oci:/images/layout:v3", "oci", "/images/layout", "v3", "layout"),
    ("oci-archive:x.tar.gz", "oci-archive", "x.tar.gz", "", "x"),
])
def test_references(uri, transport, path, name, image_name):
    ref = parse_reference(uri)
    assert (ref.transport, ref.path, ref.name) == (transport, path, name)
    assert ref.default_image_name == image_name


@pytest.mark.parametrize("uri", ["", "UPPER", "a b", "oci:", "docker-archive:", "app:",
                                 "x" * 300, "app\n", "-app"])
def test_bad_references(uri):
    with pytest.raises(ContainerError):
        parse_reference(uri)


@given(st.text(max_size=80))
def test_any_text_parses_or_is_one_clean_error(text):
    try:
        ref = parse_reference(text)
    except ContainerError as error:
        assert "\n" not in str(error)
        return
    assert ref.transport in ("docker-daemon", "docker-archive", "oci", "oci-archive")
