"""Read queries answered by one SQL statement that builds the whole response as JSON.

Hot reads (a member's profile, a page of members) cost one statement and no per-field Python:
the document is validated and compiled once per process (`Plans`), and each request only coerces
its variables, binds its arguments and passes PostgreSQL's JSON through. Anything without an SQL
form (mutations, fields not mapped in `members`, directives, errors to report) takes strawberry's
general path instead, so both paths must answer alike: tests/test_sqljson.py holds them to it.
"""

from resolvers.sqljson.compiler import Needs
from resolvers.sqljson.plans import Plan, Plans

__all__ = ["Needs", "Plan", "Plans"]
