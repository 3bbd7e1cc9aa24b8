"""Convert a whole image: every platform's manifest, its layers in parallel, then push.

For each manifest (an index is converted entry by entry, filtered by platform):
1. fetch the layers into the content store (skipped for blobs it has; verified);
2. chain them as cache refs and get each layer's Nydus variant - converted once, then found
   again by source digest on later runs, so converting an image twice is quick; layers that
   already are Nydus blobs are used as they are;
3. `merge_nydus` the chain into the bootstrap layer;
4. rewrite manifest and config (`manifest.py`), push blobs, config, then the manifest.
The steps overlap. The `jobs` largest layers the store lacks convert while they download
(`streaming.py`: the download is teed into the converter through a pipe; the result is
committed only once the download's digest is verified, and linked to the layer's ref when
the chain reaches it). The other layers download side by side (`IO_WORKERS`) and each
converts as soon as it and its parent are in. Every result is pushed while the others
convert and merge. (Threads: zstd, ISA-L inflate and the digests release the GIL; a process
pool measured no faster.)
A manifest that already ends in a bootstrap layer is copied unchanged.

`reverse=True` goes the other way: each Nydus blob layer is unpacked to a gzip tar (again a
cached compression variant) and the bootstrap layer is dropped.

A manifest (or index) is pushed only once every blob (or manifest) it names is in the
target, so a failure never leaves a manifest naming something missing.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from typing import NamedTuple, TypeVar

from rafs.cache import CacheManager, Compression, ImmutableRef, merge_nydus
from rafs.cache.compression import convert_stream
from rafs.cache.image import check_layers, layer_ref
from rafs.content import exists, write_blob
from rafs.content.tee import Sink, TeeIngester
from rafs.convert.endpoints import ImageEndpoint
from rafs.convert.manifest import is_nydus, nydus_image, oci_image
from rafs.convert.streaming import NotStreamed, StreamedFetch
from rafs.digest import Digest
from rafs.errors import InvalidArgument, NotFound
from rafs.oci import Descriptor, ImageConfig, Index, Manifest, Platform, parse_manifest

IO_WORKERS = 4
"""Fetches and pushes at once (they wait on the network, not the CPU)."""

T = TypeVar("T")
R = TypeVar("R")

Progress = Callable[[str, int], None]
"""Called with an event name (`"layers"` to set the total, `"layer"` per finished layer)
and a count."""


@dataclass(frozen=True)
class ConvertOptions:
    platforms: tuple[str, ...] = ()
    """`os/arch[/variant]` entries of an index to convert; empty: all of them."""
    reverse: bool = False
    with_referrer: bool = False
    jobs: int = 2


@dataclass
class ConvertSummary:
    manifests: int = 0
    layers: int = 0
    converted: int = 0
    """Layers converted by this run (the others were found in the store)."""
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    result: Descriptor | None = field(default=None)


def convert_image(
    source: ImageEndpoint, target: ImageEndpoint, cache: CacheManager,
    options: ConvertOptions = ConvertOptions(), progress: Progress | None = None,
) -> ConvertSummary:  # fmt: skip
    started = time.monotonic()
    summary = ConvertSummary()
    job = _Conversion(source, target, cache, options, summary, progress or (lambda _e, _n: None))
    try:
        desc, data = source.resolve()
        document = parse_manifest(desc.media_type, data, source.name)
        if isinstance(document, Index):
            summary.result = job.convert_index(document)
        else:
            summary.result = target.push_manifest(job.convert_manifest(desc, document))
    finally:
        job.close()
    summary.seconds = time.monotonic() - started
    return summary


def import_image(source: ImageEndpoint, cache: CacheManager) -> ImmutableRef:
    """Fetch one image's layers into the cache's store (verified) and chain their refs;
    returns the top ref."""
    desc, data = source.resolve()
    document = parse_manifest(desc.media_type, data, source.name)
    if isinstance(document, Index):
        raise InvalidArgument(f"{source.name}: is an index of {len(document.manifests)} "
                              "images; import one platform's manifest")  # fmt: skip
    config = ImageConfig.from_bytes(source.read_document(document.config),
                                    f"{source.name}: config")  # fmt: skip
    check_layers(document.layers, config.diff_ids, source.name)
    ref = None
    for layer, diff_id in zip(document.layers, config.diff_ids, strict=True):
        source.fetch_into(layer, cache.store)
        ref = layer_ref(cache, layer, diff_id, ref)
    assert ref is not None
    return ref


class _Stream(NamedTuple):
    """A layer converting while it downloads."""

    fetched: Future[None]
    """The download, done once the layer is in the store (verified)."""
    ref: Future[ImmutableRef]
    """Its ref, set when the chain reaches it."""
    conversion: Future[Descriptor]
    """Its Nydus blob, linked to the ref and pushed."""


class _Conversion:
    def __init__(self, source: ImageEndpoint, target: ImageEndpoint, cache: CacheManager,
                 options: ConvertOptions, summary: ConvertSummary,
                 progress: Progress) -> None:  # fmt: skip
        self.source, self.target, self.cache = source, target, cache
        self.store = cache.store
        self.options, self.summary, self.progress = options, summary, progress
        self.io = ThreadPoolExecutor(max_workers=IO_WORKERS, thread_name_prefix="convert-io")
        self.cpu = ThreadPoolExecutor(max_workers=max(1, options.jobs),
                                      thread_name_prefix="convert")  # fmt: skip

    def close(self) -> None:
        self.io.shutdown(cancel_futures=True)
        self.cpu.shutdown(cancel_futures=True)

    def _parallel(self, function: Callable[[T], R], items: Iterable[T]) -> list[R]:
        return list(self.io.map(function, items))

    def convert_index(self, index: Index) -> Descriptor:
        wanted = set(self.options.platforms)
        entries = [entry for entry in index.manifests
                   if not wanted or _platform_name(entry.platform) in wanted]  # fmt: skip
        if not entries:
            raise NotFound(f"{self.source.name}: no manifest for platform "
                           f"{', '.join(sorted(wanted))}")  # fmt: skip
        converted = []
        for entry in entries:
            manifest = parse_manifest(entry.media_type, self.source.read_document(entry),
                                      f"{self.source.name}@{entry.digest}")  # fmt: skip
            if not isinstance(manifest, Manifest):
                raise NotFound(f"{self.source.name}@{entry.digest}: nested index not supported")
            pushed = self.target.push_manifest(self.convert_manifest(entry, manifest), child=True)
            converted.append(replace(entry, media_type=pushed.media_type, digest=pushed.digest,
                                     size=pushed.size))  # fmt: skip
        return self.target.push_manifest(replace(index, manifests=tuple(converted)))

    def convert_manifest(self, desc: Descriptor, manifest: Manifest) -> Manifest:
        """Convert one image manifest; its blobs and config are in the target on return."""
        self.summary.manifests += 1
        what = f"{self.source.name}@{desc.digest}"
        config_data = self.source.read_document(manifest.config)
        config = ImageConfig.from_bytes(config_data, f"{what}: config")
        self.summary.bytes_before += sum(layer.size for layer in manifest.layers)
        if is_nydus(manifest) != self.options.reverse:
            return self._copied(manifest, config_data)
        layers = list(manifest.layers)
        diff_ids = list(config.diff_ids)
        if self.options.reverse:
            layers, diff_ids = layers[:-1], diff_ids[: len(layers) - 1]
        check_layers(layers, diff_ids, what)
        self.progress("layers", len(layers))
        wanted = Compression.GZIP if self.options.reverse else Compression.NYDUS
        pushes: list[Future[None]] = []
        streamed = {} if self.options.reverse else self._start_streams(layers, pushes)
        fetches = [streamed[i].fetched if i in streamed
                   else self.io.submit(self.source.fetch_into, layer, self.store)
                   for i, layer in enumerate(layers)]  # fmt: skip
        conversions, top = [], None
        try:
            for i, (layer, diff_id, fetch) in enumerate(zip(layers, diff_ids, fetches,
                                                            strict=True)):  # fmt: skip
                try:
                    fetch.result()
                except BaseException:
                    if i in streamed:  # its conversion knows best why (it may have ended it)
                        streamed[i].ref.cancel()
                        with contextlib.suppress(CancelledError):
                            streamed[i].conversion.result()
                    raise
                top = layer_ref(self.cache, layer, diff_id, top)
                if i in streamed:
                    streamed[i].ref.set_result(top)
                    conversions.append(streamed[i].conversion)
                else:
                    conversions.append(self.cpu.submit(self._variant, top, wanted, pushes))
        finally:
            for stream in streamed.values():
                stream.ref.cancel()  # a stream waiting for a ref that will never come gives up
        assert top is not None
        new_layers = [conversion.result() for conversion in conversions]
        if self.options.reverse:
            new_manifest, new_config = oci_image(manifest, config, new_layers)
            made: list[Descriptor] = []
        else:
            bootstrap = merge_nydus(top)
            subject = desc if self.options.with_referrer else None
            new_manifest, new_config = nydus_image(manifest, config, new_layers, bootstrap,
                                                   subject)  # fmt: skip
            made = [bootstrap]
        config_desc = self._store_document(new_config.to_bytes(), manifest.config.media_type)
        pushes += [self.io.submit(self.target.push_blob, blob, self.store)
                   for blob in (*made, config_desc)]  # fmt: skip
        for push in pushes:
            push.result()
        self.summary.layers += len(layers)
        self.summary.bytes_after += sum(layer.size for layer in (*new_layers, *made))
        return replace(new_manifest, config=replace(config_desc,
                                                    annotations=manifest.config.annotations))

    def _variant(self, ref: ImmutableRef, compression: Compression,
                 pushes: list[Future[None]]) -> Descriptor:  # fmt: skip
        """The layer in `compression` (converted unless stored), its push started."""
        if ref.ensure_compression(compression):
            self.summary.converted += 1
        return self._pushed(ref.get_blob_with_compression(compression), pushes)

    def _pushed(self, desc: Descriptor, pushes: list[Future[None]]) -> Descriptor:
        """A layer's converted blob, its push started and its progress counted."""
        pushes.append(self.io.submit(self.target.push_blob, desc, self.store))
        self.progress("layer", 1)
        return desc

    def _start_streams(self, layers: list[Descriptor],
                       pushes: list[Future[None]]) -> dict[int, _Stream]:  # fmt: skip
        """Start converting the `jobs` largest layers the store lacks as they download."""
        first = {layer.digest: i for i, layer in reversed(list(enumerate(layers)))}
        cold = [i for i in first.values() if not exists(self.store, layers[i].digest)]
        cold.sort(key=lambda i: layers[i].size, reverse=True)  # one stream per blob
        started: dict[int, _Stream] = {}
        for i in cold[: self.options.jobs]:
            layer = layers[i]
            fetch = StreamedFetch(partial(self._fetch_teed, layer), str(layer.digest), layer.size)
            ref: Future[ImmutableRef] = Future()
            conversion = self.cpu.submit(self._streamed_variant, layer, fetch, ref, pushes)
            started[i] = _Stream(fetch.fetched, ref, conversion)
        return started

    def _fetch_teed(self, layer: Descriptor, sink: Sink) -> None:
        self.source.fetch_into(layer, TeeIngester(self.store, sink))

    def _streamed_variant(self, layer: Descriptor, fetch: StreamedFetch,
                          ref: Future[ImmutableRef], pushes: list[Future[None]]) -> Descriptor:
        """Convert `layer` to Nydus from its download, then link the result to its ref and
        start its push. Falls back to converting from the store when another process
        downloaded the layer meanwhile (nothing reached the stream)."""
        try:
            made = convert_stream(self.store, layer, fetch.stream, Compression.NYDUS,
                                  before_commit=fetch.wait)  # fmt: skip
        except NotStreamed:
            made = None
        except BaseException:
            error = fetch.cancel()
            if error is not None:
                raise error from None  # the download failed: that is the cause
            if fetch.passed == 0:
                made = None
            else:
                raise
        if made is None:
            return self._variant(ref.result(), Compression.NYDUS, pushes)
        self.summary.converted += 1
        return self._pushed(ref.result().adopt_variant(made), pushes)

    def _store_document(self, data: bytes, media_type: str) -> Descriptor:
        digest = Digest.of(data)
        write_blob(self.store, f"document-{digest}", io.BytesIO(data), expected=digest)
        return Descriptor(media_type, digest, len(data))

    def _copied(self, manifest: Manifest, config_data: bytes) -> Manifest:
        """Bring an image that needs no conversion to the target unchanged."""
        self._parallel(lambda layer: self.source.fetch_into(layer, self.store), manifest.layers)
        config_desc = self._store_document(config_data, manifest.config.media_type)
        self._parallel(lambda blob: self.target.push_blob(blob, self.store),
                       [*manifest.layers, config_desc])  # fmt: skip
        self.summary.bytes_after += sum(layer.size for layer in manifest.layers)
        return manifest


def _platform_name(platform: Platform | None) -> str:
    return "" if platform is None else str(platform)
