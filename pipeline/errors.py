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
