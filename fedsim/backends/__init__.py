"""Backends run the same ServerApp/ClientApp: ``inprocess`` (our Grid) or ``ray`` (Flower's)."""
