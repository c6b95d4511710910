"""conversations and their turns; streams.prompt and streams.settings (channel mode)

Revision ID: 8f4b0d2c6e32
Revises: 6d2c4b7e1a90
Create Date: 2026-12-03 04:30:00.000000

"""
from alembic import op
import sqlalchemy as sa



# revision identifiers, used by Alembic.
revision = '8f4b0d2c6e32'
down_revision = '6d2c4b7e1a90'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'conversations',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('tenant_id', sa.String(length=32), nullable=False),
        sa.Column('user_id', sa.String(length=32), nullable=False),
        sa.Column('title', sa.String(length=200), nullable=False),
        sa.Column('model', sa.String(length=200), nullable=True),
        sa.Column('system_prompt', sa.Text(), nullable=True),
        sa.Column('temperature', sa.Float(), nullable=True),
        sa.Column('top_p', sa.Float(), nullable=True),
        sa.Column('max_tokens', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_conversations_tenant_id_tenants')),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_conversations_user_id_users')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_conversations')),
    )
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.create_index('ix_conversations_owner_updated', ['tenant_id', 'user_id', 'updated_at'], unique=False)

    op.create_table(
        'conversation_turns',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('conversation_id', sa.String(length=32), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('content', sa.Text(), nullable=False),
        sa.Column('model', sa.String(length=200), nullable=False),
        sa.Column('stream_id', sa.String(length=32), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], name=op.f('fk_conversation_turns_conversation_id_conversations'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['stream_id'], ['streams.id'], name=op.f('fk_conversation_turns_stream_id_streams')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_conversation_turns')),
        sa.UniqueConstraint('conversation_id', 'position', name=op.f('uq_conversation_turns_conversation_id')),
    )
    with op.batch_alter_table('conversation_turns', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_conversation_turns_conversation_id'), ['conversation_id'], unique=False)

    with op.batch_alter_table('streams', schema=None) as batch_op:
        batch_op.add_column(sa.Column('prompt', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('settings', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('streams', schema=None) as batch_op:
        batch_op.drop_column('settings')
        batch_op.drop_column('prompt')

    with op.batch_alter_table('conversation_turns', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_conversation_turns_conversation_id'))
    op.drop_table('conversation_turns')

    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_index('ix_conversations_owner_updated')
    op.drop_table('conversations')
