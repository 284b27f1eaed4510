"""The terminal side of a flow run, shared by the CLI and the demo: contract lines,
progress bars and answers to the approval pause."""
