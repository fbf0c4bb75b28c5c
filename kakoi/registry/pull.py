"""`kakoi pull`: fetch an image from a registry into the local store.

The steps: resolve the reference to a manifest (selecting a platform from an index), fetch and
verify the config, download the layers in parallel while verifying their digests and diff_ids,
then hand everything to the store, which installs the layers by chain id and writes the name and
manifest digest last. A failure at any step leaves the store's images as they were.

Each layer whose dir the store lacks is unpacked while it downloads, into a work dir in the
store's tmp/, so it is decompressed once and the unpack overlaps the transfer. The store moves
the work dir into layers/ only at commit, after its diff_id matched; on any failure it is
removed. A download that resumes a partial file leaves the unpack to the store, from the blob.
"""

from __future__ import annotations

from contextlib import closing

from kakoi import log
from kakoi.errors import DigestMismatchError
from kakoi.image import digest as digests
from kakoi.image import reference as references
from kakoi.registry import config as configs
from kakoi.registry import credentials as creds
from kakoi.registry import manifest as manifests
from kakoi.registry import workers
from kakoi.registry.blob import BlobDownload
from kakoi.registry.client import RegistryClient, check_digest
from kakoi.registry.errors import ManifestError, RegistryError
from kakoi.registry.http import TransportError
from kakoi.registry.progress import Quiet

PARALLEL_DOWNLOADS = 3
MAX_CONFIG_SIZE = 16 << 20


class PullResult:
    """Outcome of a pull: image id, resolved digest, and whether the store changed."""

    def __init__(self, image_id: str, digest: str, name: str, updated: bool):
        self.image_id = image_id
        self.digest = digest
        self.name = name
        self.updated = updated


class ResolvedImage:
    """A platform manifest and the digest of what the reference named (manifest or index)."""

    def __init__(self, client: RegistryClient, manifest: bytes, media_type: str,
                 digest: str, from_index: bool):
        self.client = client
        self.manifest = manifest
        self.media_type = media_type
        self.digest = digest
        self.from_index = from_index


def make_client(domain: str, registries: dict | None = None, transport=None,
                **options) -> RegistryClient:
    """Return a client for the registry of a reference's domain, with stored credentials."""
    settings = configs.settings_for(domain, registries)
    return RegistryClient(configs.api_host(domain), settings, creds.lookup(domain),
                          transport=transport, **options)


def _clients(ref: references.Reference, transport, options) -> list[RegistryClient]:
    registries = configs.load()
    settings = configs.settings_for(ref.domain, registries)
    mirrors = [make_client(host, registries, transport, **options) for host in settings.mirrors]
    return mirrors + [make_client(ref.domain, registries, transport, **options)]


def resolve(clients: list[RegistryClient], ref: references.Reference,
            platform: manifests.Platform | None) -> ResolvedImage:
    """Fetch the manifest from the first mirror that has it, else from the registry."""
    for client in clients[:-1]:
        try:
            return _resolve_with(client, ref, platform)
        except (RegistryError, DigestMismatchError) as error:
            log.debug("mirror %s failed for %s: %s", client.host, ref, error)
    return _resolve_with(clients[-1], ref, platform)


def _resolve_with(client: RegistryClient, ref: references.Reference,
                  platform: manifests.Platform | None) -> ResolvedImage:
    body, media_type, header_digest = client.get_manifest(ref.path, ref.digest or ref.tag)
    digest = check_digest(body, ref.digest or header_digest, f"manifest of {ref}")
    if media_type not in manifests.INDEX_TYPES:
        return ResolvedImage(client, body, media_type, digest, False)

    requested = platform or manifests.host_platform()
    entry = manifests.select_platform(body, requested, ref.familiar())
    child, child_type, _ = client.get_manifest(ref.path, entry.digest)
    check_digest(child, entry.digest, f"manifest {entry.digest} of {ref}")
    if child_type in manifests.INDEX_TYPES:
        raise ManifestError(f"the index of {ref} points to another index for {requested}; "
                            "nested indexes are not supported")
    return ResolvedImage(client, child, child_type, digest, True)


def fetch_config(client: RegistryClient, repository: str,
                 descriptor: manifests.Descriptor) -> bytes:
    if descriptor.size > MAX_CONFIG_SIZE:
        raise ManifestError(f"the image config is {descriptor.size} bytes, more than the limit "
                            f"of {MAX_CONFIG_SIZE} bytes")
    response = client.open_blob(repository, descriptor.digest)
    with closing(response):
        client.check_status(response, f"config {descriptor.digest}")
        body = bytearray()
        try:
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > descriptor.size:
                    break
        except TransportError as error:
            raise client.transport_failure(f"config {descriptor.digest}", error) from None
    check_digest(bytes(body), descriptor.digest, f"config {descriptor.digest}")
    return bytes(body)


def _check_config(config_bytes: bytes, image: manifests.ImageManifest,
                  platform: manifests.Platform | None, name: str) -> list[str]:
    config = manifests.parse_json(config_bytes, "image config")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids")
    if not isinstance(diff_ids, list) or len(diff_ids) != len(image.layers):
        raise ManifestError(f"the config of {name} lists "
                            f"{len(diff_ids) if isinstance(diff_ids, list) else 'no'} diff_ids "
                            f"for {len(image.layers)} layers; the image is inconsistent")
    if platform is not None:
        actual = manifests.Platform(str(config.get("os", "")),
                                    str(config.get("architecture", "")), config.get("variant"))
        same = (actual.os, actual.architecture) == (platform.os, platform.architecture)
        if not same or (platform.variant and actual.variant
                        and actual.variant != platform.variant):
            raise ManifestError(f"image {name} is for {actual}, not for the requested "
                                f"platform {platform}; choose another --platform or image")
    return diff_ids


class StreamedLayer:
    """Unpack one layer from the chunks its download feeds, into a work dir made at the first.

    Extraction errors are kept, not raised, because the pull reports a diff_id mismatch first,
    as the store would.
    """

    def __init__(self, store, chain_id: str, label: str):
        self.store = store
        self.chain_id = chain_id
        self.label = label
        self.work = None
        self.size: int | None = None
        self.error: BaseException | None = None
        self._extractor = None
        self._aborted = False

    def feed(self, data: bytes) -> None:
        if self._extractor is None:
            from kakoi.image.layer import StreamExtractor

            self.work = self.store.new_layer_work()
            self._extractor = StreamExtractor(self.work / "diff", self.label)
        self._extractor.feed(data)

    def abort(self) -> None:
        self._aborted = True
        if self._extractor is not None:
            self._extractor.abort()
            self._extractor = None
        self.discard()

    def close(self) -> None:
        if self._extractor is None or self._aborted:
            return
        try:
            self.size = self._extractor.close()
        except Exception as error:
            self.error = error
            self.discard()
        finally:
            self._extractor = None

    def unpacked(self, diff_id: str):
        """Return the store's description of the unpacked dir, or None when none was made."""
        if self.error is not None:
            raise self.error
        if self.work is None or self.size is None:
            return None
        from kakoi.image.store import UnpackedLayer

        return UnpackedLayer(self.work, diff_id, self.size)

    def discard(self) -> None:
        if self.work is not None:
            self.store.discard_layer_work(self.work)
            self.work = None


class _LayerJob:
    """One unique layer blob: its download and, when the store lacks the layer dir, its unpack."""

    def __init__(self, download: BlobDownload, streamed: StreamedLayer | None):
        self.download = download
        self.streamed = streamed

    def run(self) -> str | None:
        try:
            diff_id = self.download.run()
        except BaseException:
            if self.streamed is not None:
                self.streamed.abort()
            raise
        if self.streamed is not None:
            self.streamed.close()
        return diff_id


def download_layers(store, client: RegistryClient, repository: str,
                    layers: list[manifests.Descriptor], progress,
                    chain_ids: list[str] | None = None, decompress: bool = True,
                    diff_ids: list[str] | None = None
                    ) -> tuple[list[str | None], dict[str, StreamedLayer]]:
    """Download every layer not yet in the store; return each computed diff_id.

    A diff_id is None for a blob that was already stored, and for every blob when decompress
    is false. With `chain_ids`, each layer whose dir the store lacks is also unpacked while it
    downloads. The second result maps those chain ids to their StreamedLayer. The caller
    installs each with commit_pull or discards it. With `diff_ids` (the config's), a blob
    that decompresses to another diff_id raises DigestMismatchError and is not stored.
    """
    store.ensure_layout()
    jobs: dict[str, _LayerJob] = {}
    streamed: dict[str, StreamedLayer] = {}
    for index, layer in enumerate(layers):
        if layer.digest in jobs:
            continue
        stream = None
        chain_id = chain_ids[index] if chain_ids else None
        if chain_id is not None and not store.layer_dir(chain_id).exists():
            stream = streamed[chain_id] = StreamedLayer(store, chain_id, f"layer {layer.digest}")
        _drop_damaged_blob(store, layer.digest)
        download = BlobDownload(client, repository, layer.digest, layer.size,
                                manifests.LAYER_COMPRESSION[layer.media_type],
                                str(store.tmp_dir), str(store.blob_path(layer.digest)),
                                progress, sink=stream, decompress=decompress,
                                diff_id=diff_ids[index] if diff_ids else None)
        jobs[layer.digest] = _LayerJob(download, stream)
    try:
        # Downloads not yet started are dropped; running ones finish into their partial files.
        outcomes = workers.run_all([job.run for job in jobs.values()], PARALLEL_DOWNLOADS,
                                   "kakoi-pull", on_interrupt=client.abort)
    except BaseException:
        for stream in streamed.values():
            stream.discard()
        raise
    results = dict(zip(jobs, outcomes))
    return [results[layer.digest] for layer in layers], streamed


def _drop_damaged_blob(store, digest: str) -> None:
    """Remove a stored blob whose content no longer matches its digest, so it is fetched again.

    A default pull of an image that is already stored reads each blob anyway, because the
    store checks it against the config's diff_id. Hashing it first costs less than that
    check, and lets the pull fetch a damaged blob again instead of failing on it.
    """
    actual = store.remove_damaged_blob(digest)
    if actual is not None:
        log.warning("stored blob %s is damaged (its content hashes to %s); fetching it again",
                    digest, actual, name=__name__)


def pull(store, text: str, platform: manifests.Platform | None = None, progress=None,
         transport=None, unpack: bool = True, **options) -> PullResult:
    """Pull the image named by `text` into `store` and return what was stored.

    With unpack false, only the blobs are stored, each checked against its digest, and the
    layers are unpacked (and checked against the config's diff_ids) when a container or a
    build first uses the image. That is the work of `skopeo copy`, for images that are only
    passed on (push, save) or prepared ahead of their use.
    """
    progress = progress or Quiet()
    ref = references.parse(text)
    store.sweep_stale_work()  # what an earlier pull left when it was killed
    clients = _clients(ref, transport, options)
    try:
        progress.line(f"{ref.tag or ref.digest}: Pulling from {ref.path}")
        resolved = resolve(clients, ref, platform)
        return _fetch_and_commit(store, ref, resolved, platform, progress, unpack)
    finally:
        for client in clients:
            client.close()


def _fetch_and_commit(store, ref: references.Reference, resolved: ResolvedImage,
                      platform: manifests.Platform | None, progress,
                      unpack: bool = True) -> PullResult:
    image = manifests.parse_manifest(resolved.manifest, resolved.media_type)
    client = resolved.client
    config_bytes = fetch_config(client, ref.path, image.config)
    # An explicit --platform is checked against a single manifest's config too.
    check_platform = platform if not resolved.from_index else None
    diff_ids = _check_config(config_bytes, image, check_platform, ref.familiar())

    chain_ids = digests.chain_ids(diff_ids)
    computed, streamed = download_layers(store, client, ref.path, image.layers, progress,
                                         chain_ids if unpack else None, decompress=unpack,
                                         diff_ids=diff_ids)
    try:
        unpacked = _check_layers(ref, image.layers, diff_ids, chain_ids, computed, streamed)

        # The repo digest is what the registry served for the reference: for an index, the
        # index's digest, as Docker records it.
        name = str(ref) if ref.tag is not None else None
        layers = [(layer.digest, layer.media_type, layer.size) for layer in image.layers]
        record, updated = store.commit_pull(
            names=[name] if name else [], manifest=resolved.manifest,
            manifest_media_type=resolved.media_type, config=config_bytes,
            config_media_type=image.config.media_type or manifests.MEDIA_OCI_CONFIG,
            layers=layers, unpacked=unpacked, repo_digest=f"{ref.name}@{resolved.digest}",
            unpack=unpack)
    finally:
        # Installed dirs are gone from tmp/; this removes the rest.
        for stream in streamed.values():
            stream.discard()
    return PullResult(record.id, resolved.digest, str(ref), updated)


def _check_layers(ref: references.Reference, layers: list[manifests.Descriptor],
                  diff_ids: list[str], chain_ids: list[str], computed: list[str | None],
                  streamed: dict[str, StreamedLayer]) -> dict:
    """Compare the computed diff_ids with the config's; return the layers unpacked on the way."""
    for layer, expected, actual in zip(layers, diff_ids, computed):
        if actual is not None and actual != expected:
            raise DigestMismatchError(f"layer {layer.digest} of {ref} uncompresses to {actual}, "
                                      f"but the config's diff_id is {expected}; the image is "
                                      "damaged, check the registry")

    unpacked = {}
    for diff_id, chain_id, actual in zip(diff_ids, chain_ids, computed):
        stream = streamed.get(chain_id)
        if stream is None or actual is None:
            continue
        ready = stream.unpacked(diff_id)
        if ready is not None:
            unpacked[chain_id] = ready
    return unpacked


def login(host: str, username: str, password: str, transport=None, **options) -> str:
    """Verify the credentials against the registry's /v2/ and store them; return the file."""
    registries = configs.load()
    settings = configs.settings_for(host, registries)
    client = RegistryClient(configs.api_host(host), settings, (username, password),
                            transport=transport, **options)
    try:
        client.check_login()
    finally:
        client.close()
    return creds.store(host, username, password)


__all__ = ["pull", "login", "PullResult", "resolve", "make_client"]
