"""The command-line front end: parse, call the Workspace, print. Nothing else."""
