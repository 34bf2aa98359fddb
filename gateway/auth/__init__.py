"""Authentication domain: access tokens (JWT/JWKS), tickets, device-approval
sessions, refresh tokens, and admission (who a socket is, decided once)."""
