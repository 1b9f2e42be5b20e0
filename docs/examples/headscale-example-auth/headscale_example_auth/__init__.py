"""headscale-example-auth: allow logins only from configured email domains."""
