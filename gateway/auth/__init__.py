"""Authentication domain: tokens (JWT/JWKS), tickets and, later, sessions."""
