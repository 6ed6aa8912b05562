"""The web servers an image carries, and where they serve precompressed files (``FILE.gz`` for ``FILE``).

``passes.compressed_duplicates`` keeps the twins such a server sends instead of compressing on the fly.
"""

from __future__ import annotations

from .nginx import NginxStatic, nginx_static

__all__ = ["NginxStatic", "nginx_static"]
