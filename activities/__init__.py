"""Every side effect: Postgres, agents, MCP tools, Stripe, Lago, notifications."""
