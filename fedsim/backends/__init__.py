"""Backends run the same ServerApp/ClientApp: ``inprocess`` (fedsim's Grid in this process),
``ray`` (fedsim's Grid over a pool of Ray actors) and ``flower-simulation`` (Flower's engine).
"""
