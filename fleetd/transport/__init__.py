"""How the controller reaches agents: the ``AgentClient`` protocol and its implementations' shared types."""
