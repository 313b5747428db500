"""``python -m fedsim``: the same CLI as the ``fedsim`` script (handy without the venv's bin)."""

from fedsim.cli import main

main()
