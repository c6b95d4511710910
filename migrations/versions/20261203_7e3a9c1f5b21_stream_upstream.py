"""streams.upstream, streams.upstream_attempts: which model server served a stream

Revision ID: 7e3a9c1f5b21
Revises: 8f4b0d2c6e32
Create Date: 2026-12-03 04:20:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '7e3a9c1f5b21'
down_revision = '8f4b0d2c6e32'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('streams', schema=None) as batch_op:
        batch_op.add_column(sa.Column('upstream', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('upstream_attempts', sa.Integer(), nullable=True))


def downgrade():
    with op.batch_alter_table('streams', schema=None) as batch_op:
        batch_op.drop_column('upstream_attempts')
        batch_op.drop_column('upstream')
