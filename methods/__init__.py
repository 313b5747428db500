"""fedsim's methods, installed under one name: ``fedsim_methods``.

Each method sits under one name in three folders of the repository, mapped into this
package by ``pyproject.toml`` (``[tool.setuptools.package-dir]``):

- ``methods/<name>/``    -> ``fedsim_methods.<name>``: its declaration (the ``Method`` the
  entry point names), config sections, validators, protocol constants and library, which
  both halves may import;
- ``strategies/<name>``  -> ``fedsim_methods.strategies.<name>``: the server half;
- ``clients/<name>``     -> ``fedsim_methods.clients.<name>``: the client half.

The server half never imports the client half or the reverse. Nothing is installed under
the generic names ``strategies`` or ``clients``.
"""
