"""Pretrained face embedder: dlib's ResNet face model via face-api.js weights.

Typical use::

    from components.embed import Embedder, convert

    model_path = convert(Path("models/cache"), Path("models/face_recognition_net.keras"))
    vectors = Embedder(model_path).embed(crops)  # (N, 150, 150, 3) uint8 -> (N, 128)

Importing this package does not import TensorFlow; that happens on the first
``convert`` / ``build_face_recognition_net`` call or the first ``embed``.
"""

from components.embed.weights import PACKAGE_VERSION, WeightsChecksumError, fetch_weights, load_manifest_weights

__version__ = "1.0.0"

MODEL_NAME = f"dlib-resnet-faceapi-{PACKAGE_VERSION}"
INPUT_SIZE = 150
EMBEDDING_DIM = 128

# After the constants: embedder.py imports them from this package.
from components.embed.embedder import Embedder  # noqa: E402

_KERAS_EXPORTS = {"convert", "build_face_recognition_net"}


def __getattr__(name: str):
    # network.py imports keras (seconds); defer it until someone needs it.
    if name in _KERAS_EXPORTS:
        from components.embed import network

        return getattr(network, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EMBEDDING_DIM",
    "INPUT_SIZE",
    "MODEL_NAME",
    "Embedder",
    "WeightsChecksumError",
    "__version__",
    "build_face_recognition_net",
    "convert",
    "fetch_weights",
    "load_manifest_weights",
]
