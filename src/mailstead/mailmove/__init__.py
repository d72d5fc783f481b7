"""Moving mail in and out: import (mbox, Maildir, IMAP pull), export (Maildir, mbox, tar.gz),
backup and restore, and the guards around schema migrations.

Everything here stores through the mailbox service (``MailboxService.append_many``) or reads
through the store interfaces; nothing writes SQL.
"""
