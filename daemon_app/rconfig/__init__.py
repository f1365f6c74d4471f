"""Remote configuration pushed by the Manager (issue 16): the Agent config push and its safety loop."""
