"""Knowledge-base search: one engine for agents, the help centre and the API.

Pure Python plus numpy (scipy for the optional learned re-ranker); no database. See ``engine`` for
the index design and ``evaluation`` for ``kefu kb eval``.
"""

from kefu.knowledge.search.analyzer import Analyzer, highlight, normalize
from kefu.knowledge.search.engine import (
    Document,
    FieldParams,
    SearchConfig,
    SearchEngine,
    SearchFilters,
    SearchHit,
    Suggestion,
)

__all__ = [
    "Analyzer",
    "Document",
    "FieldParams",
    "SearchConfig",
    "SearchEngine",
    "SearchFilters",
    "SearchHit",
    "Suggestion",
    "highlight",
    "normalize",
]
