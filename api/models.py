"""The API layer's own tables: conversations of the chat page and their turns.

A conversation belongs to one user of one tenant; each turn is the user's message and the
channel-mode stream that answered it (the reply's text, status and usage live on the stream
record, so a turn never copies them).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.store import UTCDateTime, db, new_id, utcnow

DEFAULT_TITLE = "New conversation"  # until the first message names it


class Conversation(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "conversations"
    __table_args__ = (
        Index("ix_conversations_owner_updated", "tenant_id", "user_id", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("cnv"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    title: Mapped[str] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    system_prompt: Mapped[str | None] = mapped_column(Text, default=None)
    temperature: Mapped[float | None] = mapped_column(Float, default=None)
    top_p: Mapped[float | None] = mapped_column(Float, default=None)
    max_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    turns: Mapped[list[ConversationTurn]] = relationship(
        back_populates="conversation",
        order_by="ConversationTurn.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class ConversationTurn(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "conversation_turns"
    # One turn per position: two sends racing for the same place in a conversation cannot both
    # land (the second is a 409), whatever the database's isolation level.
    __table_args__ = (UniqueConstraint("conversation_id", "position"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("trn"))
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)  # the user's message
    model: Mapped[str] = mapped_column(String(200))
    # The channel-mode stream of the reply; None only while the turn is being started.
    stream_id: Mapped[str | None] = mapped_column(ForeignKey("streams.id"), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    conversation: Mapped[Conversation] = relationship(back_populates="turns")
