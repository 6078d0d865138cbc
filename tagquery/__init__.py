"""The tag language (issue 3): text or structured filters to SQL. Empty until then."""
