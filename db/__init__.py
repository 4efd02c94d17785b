"""The platform database: schema migrations, the connection pool and one repository per table."""
