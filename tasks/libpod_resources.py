"""Image and network operations of the libpod client.

Images and networks are what a target node needs before a checkpoint can be restored on it:
the base image (a restore would otherwise try to pull it) and every network the container
was attached to ("network not found" otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .errors import PodmanError, PodmanNotFound
from .libpod_base import Archive, LibpodBase, qbool, upload_body
from .libpod_types import ImageInfo, NetworkDef
from .names import check_image_ref, check_name

__all__ = ["ImagesAndNetworks"]


class ImagesAndNetworks(LibpodBase):
    """Image and network operations (mixed into :class:`tasks.libpod.Libpod`)."""

    # -- images --------------------------------------------------------------------------

    def image_exists(self, ref: str) -> bool:
        """Return whether image ``ref`` (name or id) is present on the node."""
        check_image_ref(ref)
        try:
            self._call("GET", self._url("/images/{}/exists", ref), f"image exists {ref}")
        except PodmanNotFound:
            return False
        return True

    def inspect_image(self, ref: str) -> ImageInfo:
        """Return id, names, size and digest of image ``ref``."""
        check_image_ref(ref)
        data = self._json("GET", self._url("/images/{}/json", ref), f"inspect image {ref}")
        names = data.get("RepoTags") or data.get("NamesHistory") or []
        return ImageInfo(
            id=str(data.get("Id", "")),
            names=tuple(str(n) for n in names),
            size_bytes=int(data.get("Size") or 0),
            digest=str(data.get("Digest", "")),
        )

    def tag_image(self, ref: str, repo: str, tag: str) -> None:
        """Add the name ``repo:tag`` to image ``ref``."""
        check_image_ref(ref)
        check_image_ref(f"{repo}:{tag}")
        url = self._url("/images/{}/tag", ref)
        self._call("POST", url, f"tag image {ref}", params={"repo": repo, "tag": tag})

    @contextmanager
    def export_image(self, ref: str) -> Iterator[Iterator[bytes]]:
        """Stream image ``ref`` as an OCI archive (it keeps the image's name for a load)."""
        check_image_ref(ref)
        with self._download(self._url("/images/{}/get", ref), f"export image {ref}") as chunks:
            yield chunks

    def load_image(self, archive: Archive) -> list[str]:
        """Load an image archive (a path or byte chunks); return the names loaded."""
        with upload_body(archive) as (_, chunks, headers):
            data = self._json(
                "POST", self._url("/images/load"), "load image", content=chunks, headers=headers
            )
        return [str(n) for n in data.get("Names") or []]

    def remove_image(self, ref: str, *, force: bool = False) -> None:
        """Remove image ``ref`` (or only that name of it, when the image has several)."""
        check_image_ref(ref)
        url = self._url("/images/{}", ref)
        self._call("DELETE", url, f"remove image {ref}", params={"force": qbool(force)})

    # -- networks ------------------------------------------------------------------------

    def network_exists(self, name: str) -> bool:
        """Return whether network ``name`` exists on the node."""
        check_name(name, "network name")
        try:
            self._call("GET", self._url("/networks/{}/exists", name), f"network exists {name}")
        except PodmanNotFound:
            return False
        return True

    def inspect_network(self, name: str) -> NetworkDef:
        """Return the definition of network ``name``, ready to recreate elsewhere."""
        check_name(name, "network name")
        data = self._json("GET", self._url("/networks/{}/json", name), f"inspect network {name}")
        return NetworkDef.from_json(data)

    def create_network(self, defn: NetworkDef) -> None:
        """Create network ``defn`` (PodmanConflict if the name is taken)."""
        url = self._url("/networks/create")
        self._call("POST", url, f"create network {defn.name}", json=defn.to_json())

    def remove_network(self, name: str, *, force: bool = False) -> None:
        """Remove network ``name``; ``force`` also removes its containers."""
        check_name(name, "network name")
        what = f"remove network {name}"
        params = {"force": qbool(force)}
        reports = self._json("DELETE", self._url("/networks/{}", name), what, params=params)
        for report in reports or []:
            if isinstance(report, dict) and report.get("Err"):
                raise PodmanError(f"{what}: {report['Err']}", podman_message=str(report["Err"]))

    # -- volumes ----------------------------------------------------------------------------

    def remove_volume(self, name: str, *, force: bool = False) -> None:
        """Remove volume ``name``; ``force`` also removes containers using it."""
        check_name(name, "volume name")
        params = {"force": qbool(force)}
        self._call("DELETE", self._url("/volumes/{}", name), f"remove volume {name}", params=params)
