"""Batch face embedding with the converted FaceRecognitionNet."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from components.embed import INPUT_SIZE, MODEL_NAME


def model_digest(model_path: Path) -> str:
    """Returns a sha256 of what defines a ``.keras`` model: its config and weights.

    The file's own hash changes on every save (zip timestamps and the
    ``date_saved`` in metadata.json), so reconverting the same weights would
    look like a new model; this digest does not.

    Args:
        model_path: A ``.keras`` archive.

    Returns:
        Lower-case hex digest over the sorted member names and bytes, without
        metadata.json.
    """
    digest = hashlib.sha256()
    with zipfile.ZipFile(model_path) as archive:
        for name in sorted(set(archive.namelist()) - {"metadata.json"}):
            member = hashlib.sha256()
            with archive.open(name) as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    member.update(chunk)
            digest.update(f"{name}\0{member.hexdigest()}\n".encode())
    return digest.hexdigest()


def model_family(model_path: Path) -> str:
    """The name a model's version string starts with: FaceRes's for a FaceRes model, else ``MODEL_NAME``.

    Read from the ``.keras`` archive's config (the Keras model's name) without loading it;
    the dlib model and every model trained from it keep ``MODEL_NAME``.
    """
    import json

    try:
        with zipfile.ZipFile(model_path) as archive:
            name = json.loads(archive.read("config.json")).get("config", {}).get("name")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return MODEL_NAME
    if name == "faceres":
        from components.embed.faceres import MODEL_NAME as FACERES_NAME

        return FACERES_NAME
    return MODEL_NAME


class Embedder:
    """Maps aligned 150x150 RGB face crops to 128-D unit-norm embeddings.

    The Keras model is loaded on first use so that constructing an Embedder
    (e.g. in a pipeline's setup or a server's import) stays cheap.

    Args:
        model_path: ``.keras`` file written by ``components.embed.convert``.
        batch_size: Faces per forward pass.
    """

    def __init__(self, model_path: Path, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path = Path(model_path)
        self.batch_size = int(batch_size)
        self._model = None
        self._version: str | None = None

    @property
    def model(self):
        """The loaded Keras model (loaded on first access)."""
        if self._model is None:
            if not self.model_path.is_file():
                raise FileNotFoundError(f"{self.model_path}: no such model; build it with components.embed.convert")
            import keras

            # network registers ChannelZeroPad, which load_model must find.
            from components.embed import network  # noqa: F401

            self._model = keras.saving.load_model(self.model_path, compile=False)
        return self._model

    @property
    def version(self) -> str:
        """Model identity: ``model_family`` (``MODEL_NAME`` for the dlib model) plus a short ``model_digest``.

        Store it next to embeddings: vectors from different versions must not
        be compared. Reconverting the same weights gives the same version.
        """
        if self._version is None:
            self._version = f"{model_family(self.model_path)}+{model_digest(self.model_path)[:12]}"
        return self._version

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Embeds aligned face crops.

        Args:
            crops: ``(N, 150, 150, 3)`` uint8 RGB aligned faces; N may be 0.

        Returns:
            ``(N, D)`` float32 L2-normalised embeddings (D: the model's width, 128 for
            the dlib model, 1024 for FaceRes; for N = 0 too, so the model loads).

        Raises:
            ValueError: If ``crops`` has the wrong shape or dtype.
            FileNotFoundError: If the model file does not exist.
        """
        crops = np.asarray(crops)
        expected = (INPUT_SIZE, INPUT_SIZE, 3)
        if crops.ndim != 4 or crops.shape[1:] != expected:
            raise ValueError(f"crops must have shape (N, {', '.join(map(str, expected))}), got {crops.shape}")
        if crops.dtype != np.uint8:
            raise ValueError(f"crops must be uint8 RGB, got dtype {crops.dtype}")
        if len(crops) == 0:
            return np.zeros((0, int(self.model.output_shape[-1])), dtype=np.float32)

        model = self.model
        # The model's own width: 128 for the dlib model, 1024 for FaceRes (components.embed.faceres).
        out = np.empty((len(crops), int(model.output_shape[-1])), dtype=np.float32)
        for start in range(0, len(crops), self.batch_size):
            batch = crops[start : start + self.batch_size].astype(np.float32)
            out[start : start + len(batch)] = np.asarray(model.predict_on_batch(batch))
        return out
