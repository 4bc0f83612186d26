"""The gateway's security controls, one module each; docs/security.md maps each to the threat it answers."""
