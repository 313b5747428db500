"""fedsim: federated-learning simulation on Flower, one experiment file from laptop to cluster."""

__version__ = "0.2.0"
