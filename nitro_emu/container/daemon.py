"""A small Docker Engine API client over the daemon's unix socket (Docker, or Podman's
`podman system service`): inspect an image, pull it when missing, build one from a
directory (POST /build, as nitro-cli's --docker-dir does), and export it as a
docker-archive (GET /images/{name}/get) for the archive reader.

The socket is $DOCKER_HOST (unix:// only), else Docker's and Podman's usual sockets.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import tarfile
import tempfile
import urllib.parse
from typing import BinaryIO, Callable, Mapping

from nitro_emu.container.errors import ContainerError, DaemonUnavailable, ImageNotFound
from nitro_emu.container.reference import split_tag

DOCKER_SOCKET = "/var/run/docker.sock"
PODMAN_ROOT_SOCKET = "/run/podman/podman.sock"
MAX_REPLY = 16 << 20
CHUNK = 1 << 20
TIMEOUT_S = 600
ARCHIVE_HINT = ("to build without a daemon, name an archive: docker-archive:PATH, oci:DIR[:TAG] "
                "or oci-archive:PATH[:TAG]")


def candidate_sockets(environ: Mapping[str, str]) -> list[str]:
    """Where a daemon may listen, in the order tried; $DOCKER_HOST alone when set."""
    host = environ.get("DOCKER_HOST", "")
    if host:
        if not host.startswith("unix://"):
            raise DaemonUnavailable(f"DOCKER_HOST={host}: only unix:// sockets are supported")
        return [host[len("unix://"):]]
    sockets = [DOCKER_SOCKET]
    if environ.get("XDG_RUNTIME_DIR"):
        sockets.append(os.path.join(environ["XDG_RUNTIME_DIR"], "podman", "podman.sock"))
    sockets.append(PODMAN_ROOT_SOCKET)
    return sockets


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT_S)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DockerClient:
    """One daemon, by its socket path."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    @classmethod
    def connect(cls, environ: Mapping[str, str] | None = None) -> DockerClient:
        """The first socket that answers /_ping; DaemonUnavailable (one line) if none."""
        tried = []
        for path in candidate_sockets(os.environ if environ is None else environ):
            client = cls(path)
            try:
                client.ping()
                return client
            except DaemonUnavailable as error:
                tried.append(str(error))
        raise DaemonUnavailable(f"no Docker or Podman daemon answers ({'; '.join(tried)}); "
                                + ARCHIVE_HINT)

    # -- HTTP -------------------------------------------------------------------

    def _request(self, method: str, path: str, body: BinaryIO | bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[_UnixConnection,
                                                                 http.client.HTTPResponse]:
        connection = _UnixConnection(self.socket_path)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            return connection, connection.getresponse()
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as error:
            connection.close()
            raise DaemonUnavailable(f"unix://{self.socket_path}: "
                                    f"{error.strerror or error}") from None
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            raise ContainerError(f"daemon at unix://{self.socket_path}: {method} "
                                 f"{path.split('?')[0]} failed ({error})") from None

    def _call(self, method: str, path: str, **options) -> tuple[int, bytes]:
        connection, response = self._request(method, path, **options)
        try:
            data = response.read(MAX_REPLY + 1)
        except (OSError, http.client.HTTPException) as error:
            raise ContainerError(f"daemon: {method} {path.split('?')[0]}: reply cut "
                                 f"({error})") from None
        finally:
            connection.close()
        if len(data) > MAX_REPLY:
            raise ContainerError(f"daemon: {method} {path.split('?')[0]}: reply over "
                                 f"{MAX_REPLY} bytes")
        return response.status, data

    @staticmethod
    def _message(data: bytes) -> str:
        try:
            value = json.loads(data)
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return value["message"].strip().replace("\n", " ")[:300]
        except ValueError:
            pass
        return data.decode("utf-8", "replace").strip().replace("\n", " ")[:300]

    @staticmethod
    def _image_path(name: str, suffix: str) -> str:
        return "/images/" + urllib.parse.quote(name, safe="/:@") + suffix

    # -- API --------------------------------------------------------------------

    def ping(self) -> None:
        status, data = self._call("GET", "/_ping")
        if status != 200:
            raise DaemonUnavailable(f"unix://{self.socket_path}: /_ping answered {status}")

    def inspect(self, name: str) -> dict | None:
        """`docker inspect` of the image, or None when the daemon does not have it."""
        status, data = self._call("GET", self._image_path(name, "/json"))
        if status == 404:
            return None
        if status != 200:
            raise ContainerError(f"daemon: inspecting {name}: {self._message(data)}")
        try:
            value = json.loads(data)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise ContainerError(f"daemon: inspecting {name}: the reply is not a JSON object")
        return value

    def pull(self, name: str, log: Callable[[str], None]) -> None:
        """POST /images/create (docker pull); ImageNotFound when the daemon cannot."""
        image, tag = split_tag(name)
        query = urllib.parse.urlencode({"fromImage": image, **({"tag": tag} if tag else {})})
        self._stream("POST", f"/images/create?{query}", None, {}, log,
                     lambda message: ImageNotFound(f"image {name} is not in the daemon and "
                                                   f"pulling it failed: {message}"))

    def build(self, directory: str, tag: str, log: Callable[[str], None]) -> None:
        """POST /build with `directory` (holding a Dockerfile) as the context."""
        if not os.path.isfile(os.path.join(directory, "Dockerfile")):
            raise ContainerError(f"--docker-dir {directory}: no Dockerfile there")
        with tempfile.TemporaryFile() as context:
            try:
                with tarfile.open(fileobj=context, mode="w") as tar:
                    tar.add(directory, arcname=".")
            except OSError as error:
                raise ContainerError(f"--docker-dir {directory}: {error.strerror or error}"
                                     f"{': ' + error.filename if error.filename else ''}") \
                    from None
            size = context.tell()
            context.seek(0)
            query = urllib.parse.urlencode({"t": tag, "dockerfile": "Dockerfile"})
            self._stream("POST", f"/build?{query}", context,
                         {"Content-Type": "application/x-tar", "Content-Length": str(size)},
                         log, lambda message: ContainerError(f"building {tag} in {directory} "
                                                             f"failed: {message}"))

    def _stream(self, method: str, path: str, body, headers: dict, log,
                failure: Callable[[str], ContainerError]) -> None:
        """Run a call whose reply is a stream of JSON messages; raise `failure(message)`
        on an error status or an error message in the stream."""
        connection, response = self._request(method, path, body=body, headers=headers)
        try:
            if response.status >= 400:
                raise failure(self._message(response.read(MAX_REPLY)))
            while line := response.readline(MAX_REPLY):
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                if message.get("error"):
                    raise failure(str(message["error"]).strip().replace("\n", " ")[:300])
                text = message.get("stream") or message.get("status")
                if isinstance(text, str) and text.strip():
                    log(text.rstrip("\n"))
        except (OSError, http.client.HTTPException) as error:
            raise failure(f"connection lost ({error})") from None
        finally:
            connection.close()

    def export(self, name: str, out: BinaryIO) -> None:
        """GET /images/{name}/get: the image as a docker-archive, written to `out`."""
        connection, response = self._request("GET", self._image_path(name, "/get"))
        try:
            if response.status == 404:
                raise ImageNotFound(f"image {name} not found in the daemon")
            if response.status != 200:
                raise ContainerError(f"daemon: exporting {name}: "
                                     f"{self._message(response.read(MAX_REPLY))}")
            while chunk := response.read(CHUNK):
                out.write(chunk)                     # an OSError here is the disk's
        except (ConnectionError, TimeoutError, http.client.HTTPException) as error:
            raise ContainerError(f"daemon: exporting {name}: connection lost ({error})") \
                from None
        finally:
            connection.close()
