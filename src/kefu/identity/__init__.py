"""Users, roles, teams, skills, sessions and API tokens."""
