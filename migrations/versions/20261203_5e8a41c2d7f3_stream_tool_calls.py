"""streams.tool_calls: the tool calls a channel-mode generation made

Revision ID: 5e8a41c2d7f3
Revises: 7c1d5e0a9b42
Create Date: 2026-12-03 01:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '5e8a41c2d7f3'
down_revision = '7c1d5e0a9b42'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('streams', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tool_calls', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('streams', schema=None) as batch_op:
        batch_op.drop_column('tool_calls')
