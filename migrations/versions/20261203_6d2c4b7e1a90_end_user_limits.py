"""per-end-user limits of an app token: app_tokens.end_user_limits

Revision ID: 6d2c4b7e1a90
Revises: 5ee60a9e8cb5
Create Date: 2026-12-03 04:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '6d2c4b7e1a90'
down_revision = '5ee60a9e8cb5'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('app_tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('end_user_limits', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('app_tokens', schema=None) as batch_op:
        batch_op.drop_column('end_user_limits')
