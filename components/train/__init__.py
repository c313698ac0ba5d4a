"""Training the embedder: networks, losses, the training loop and self-labelled retraining.

``networks`` and ``losses`` are the thesis's building blocks (Inception-ResNet, the
extended head, softmax + center, triplet, CosFace/ArcFace, quadruplet); ``loop`` trains
any network with any loss; ``retrain`` fine-tunes the champion on the identity store's
own cluster labels and promotes it only when it wins on held-out people.
"""

__version__ = "1.0.0"
