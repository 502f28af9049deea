"""HTML pages of this channel."""

from fastapi import APIRouter

router = APIRouter()
