"""One exception hierarchy for the project; every error carries a reason a user can act on."""


class GenresError(Exception):
    """Base class: anything the pipeline raises on purpose."""


class ParameterError(GenresError):
    """An argument or setting is out of its valid range."""


class CatalogError(GenresError):
    """A catalog (folder, manifest, URI) cannot be used as given."""


class SpecMismatchError(GenresError):
    """Features were made with a different FeatureSpec than the model expects."""


class BundleError(GenresError):
    """A model bundle is missing or incomplete."""


class AudioError(GenresError):
    """One song cannot be used; recorded as an error row, never fatal for a job."""

    kind = "audio"


# Error kinds the next run tries again (the file may arrive, the store may answer, the node
# may be less busy); every other kind is final until a run with --retry-errors.
TRANSIENT_KINDS = ("missing", "io", "timeout")


class AudioMissingError(AudioError):
    kind = "missing"


class AudioUriError(AudioError):
    """The song's URI names a scheme this project does not read (see ``fs.scheme_problem``)."""

    kind = "uri"


class AudioDecodeError(AudioError):
    kind = "decode"


class AudioTruncatedError(AudioError):
    """The file ends before its stream does (an interrupted copy or download)."""

    kind = "truncated"


class AudioContentError(AudioError):
    """Decoded fine but unusable (empty, non-finite samples)."""

    kind = "content"


class AudioIOError(AudioError):
    """Reading the file failed (network, permissions, throttling) after every retry."""

    kind = "io"


class SongCrashError(AudioError):
    """Decoding the song killed the process decoding it, on every try."""

    kind = "crash"


class SongTimeoutError(AudioError):
    """Decoding the song ran past its time limit (scaled to its duration) on every try."""

    kind = "timeout"


class SongMemoryError(AudioError):
    """Decoding the song took more memory than one song may, on every try."""

    kind = "oom"


class SongInternalError(AudioError):
    """An unexpected exception (a bug, not the file) while decoding the song."""

    kind = "internal"


class ClusterError(GenresError):
    """The Ray cluster cannot provide what the job asks for (GPUs, nodes) in time."""
