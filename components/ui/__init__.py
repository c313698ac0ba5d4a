"""The people page: review and correct identities in a browser (``faces ui``).

* :mod:`~components.ui.app`: the Starlette application (pages, sign-in, CSRF, pictures).
* :mod:`~components.ui.corrections`: rename, merge, move, "not this person", hide,
  accept / reject suggestions, new person, undo; each one transaction, kept as
  constraints the life cycle honours.
* :mod:`~components.ui.queries`: one screen of people, faces or unknown clusters at a time.
* :mod:`~components.ui.images`: thumbnails of the stored crops, photos with the box drawn.
* :mod:`~components.ui.security`: credentials, CSRF tokens, sign-in throttling.
* :mod:`~components.ui.server`: ``faces ui``.
"""

__version__ = "1.0.0"
