"""BentoML services of the face engine: ``bentoml serve serving.service:FaceAPI``."""
