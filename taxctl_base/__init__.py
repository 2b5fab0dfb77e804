"""What every package of the project shares and none owns: the version, exit codes,
HOST:PORT parsing and running the project's own processes.

It imports nothing from the other packages but device.protocol's input policy, so
device/, syncd/, hostsim/ and the taxctl/ command line can all build on it without
importing upwards (tests/test_layers.py keeps it so).
"""
