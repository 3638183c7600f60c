"""Pure decisions: state in, decision (and new state) out. No I/O, no asyncio, no clocks read.

The same functions run in the server, in unit tests, and in the simulator.
"""
