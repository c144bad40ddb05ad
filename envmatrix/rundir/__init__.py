"""The run directory and what it holds: its layout, the plan's file form, the result files, and
a `Run` read back from it. Every stage writes here; analysis and reports read only from here."""
