"""What Flower leaves to the user when a federation runs on real machines.

``fedsim deploy certs``: a CA and a SuperLink certificate signed by it (TLS);
``fedsim deploy node-keys``: SuperNode key pairs for node authentication;
``fedsim deploy connection``: a SuperLink connection in ``$FLWR_HOME/config.toml`` that
``flwr run . NAME`` and ``flwr supernode register KEY.pub NAME`` use.
The runbook is in the README ("Deploy on real machines").
"""

from fedsim.deploy.credentials import (
    DeployError,
    make_certs,
    make_node_keys,
    write_connection,
)

__all__ = ["DeployError", "make_certs", "make_node_keys", "write_connection"]
