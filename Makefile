# One command to set up and run the daemon, one to run every test, one to install. See README.md.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CAIRN_HOME ?= $(HOME)/.local/share/cairn
SOURCE ?= $(HOME)

# System-wide install (docs/operations.md). DESTDIR stages the tree for packaging: everything
# is built for its final path and only written below $(DESTDIR).
DESTDIR ?=
PREFIX ?= /usr
BINDIR ?= $(PREFIX)/bin
DOCDIR ?= $(PREFIX)/share/doc/cairn
OPTDIR ?= /opt/cairn
SYSCONFDIR ?= /etc/cairn
UNITDIR ?= /lib/systemd/system
# The interpreter the installed environment runs on: the distribution's, which outlives
# per-user Python installations.
SYSTEM_PY ?= $(firstword $(wildcard /usr/bin/python3) $(PY))
DOCS := README.md docs/operations.md docs/design.md docs/format.md docs/journal.md docs/postgres.md \
	docs/disaster-recovery.md docs/databases.md docs/restore.md docs/reference.md

.PHONY: setup run test lint proto bench install uninstall lock

# Installed under constraints.txt: the versions the suite last passed with.
$(BIN)/cairnd: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

setup: $(BIN)/cairnd

# Runs cairnd in the foreground on the embedded default: a local repository under
# $(CAIRN_HOME)/repo (initialised here on the first run, encrypted under the key file
# $(CAIRN_HOME)/repo.key made beside it), watching $(SOURCE).
run: setup
	@mkdir -p -m 0700 $(CAIRN_HOME)
	@[ -e $(CAIRN_HOME)/repo.key ] || (umask 077 && head -c 32 /dev/urandom | base64 > $(CAIRN_HOME)/repo.key)
	@[ -e $(CAIRN_HOME)/repo ] || CAIRN_HOME=$(CAIRN_HOME) $(BIN)/cairnd --repo $(CAIRN_HOME)/repo --init --key-file $(CAIRN_HOME)/repo.key
	CAIRN_HOME=$(CAIRN_HOME) $(BIN)/cairnd --repo $(CAIRN_HOME)/repo --source $(SOURCE) --key-file $(CAIRN_HOME)/repo.key

# The suite is CPU-bound (real daemons, servers and clients as processes): TEST_WORKERS pytest
# processes share it, a test file per worker at a time. The project's modules are compiled first:
# where PYTHONDONTWRITEBYTECODE is set, every daemon and client process would compile them anew.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m compileall -q -j 0 store daemon client fsio proto cairn_pkg
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=30 tests

lint: setup
	$(BIN)/ruff check .

proto: setup
	$(BIN)/python proto/generate.py

bench: setup
	$(BIN)/python bench/backup_restore.py

# Rewrites constraints.txt from the newest releases the ranges in pyproject.toml allow (in a
# scratch environment; .venv is left as it is). Run the suite on the result before committing.
LOCK_VENV := .lock-venv
lock:
	rm -rf $(LOCK_VENV)
	$(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --upgrade pip
	$(LOCK_VENV)/bin/pip install -q '.[test]'
	{ grep '^#' constraints.txt; $(LOCK_VENV)/bin/pip freeze --exclude-editable | grep -v '^cairn-backup'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(LOCK_VENV) build

# A self-contained virtual environment at $(OPTDIR) built from this checkout (not editable),
# the commands linked into $(BINDIR), the unit, the docs and the example configurations.
# An existing $(SYSCONFDIR)/cairnd.toml is never overwritten.
install:
	rm -rf '$(DESTDIR)$(OPTDIR)'
	$(SYSTEM_PY) -m venv '$(DESTDIR)$(OPTDIR)'
	'$(DESTDIR)$(OPTDIR)/bin/python' -m pip install -q --no-compile --no-warn-script-location -c constraints.txt .
	rm -rf build
	'$(DESTDIR)$(OPTDIR)/bin/python' -m pip uninstall -q -y pip
	# Built below DESTDIR, run at OPTDIR: point scripts and activate files at the final path.
	if [ -n '$(DESTDIR)' ]; then \
	  grep -rlF --exclude-dir=__pycache__ '$(DESTDIR)$(OPTDIR)' '$(DESTDIR)$(OPTDIR)' | \
	    xargs -r sed -i 's|$(DESTDIR)$(OPTDIR)|$(OPTDIR)|g'; \
	  '$(DESTDIR)$(OPTDIR)/bin/python' -m compileall -q -f -s '$(DESTDIR)' -p / '$(DESTDIR)$(OPTDIR)/lib'; \
	else \
	  '$(OPTDIR)/bin/python' -m compileall -q '$(OPTDIR)/lib'; \
	fi
	install -d '$(DESTDIR)$(BINDIR)'
	ln -sfn '$(OPTDIR)/bin/cairnd' '$(DESTDIR)$(BINDIR)/cairnd'
	ln -sfn '$(OPTDIR)/bin/cairn' '$(DESTDIR)$(BINDIR)/cairn'
	install -d '$(DESTDIR)$(UNITDIR)'
	sed -e 's|/usr/bin/cairnd|$(BINDIR)/cairnd|g' -e 's|/usr/share/doc/cairn/|$(DOCDIR)/|g' \
	  -e 's|/etc/cairn/|$(SYSCONFDIR)/|g' systemd/cairnd.service > '$(DESTDIR)$(UNITDIR)/cairnd.service'
	chmod 0644 '$(DESTDIR)$(UNITDIR)/cairnd.service'
	install -d '$(DESTDIR)$(DOCDIR)'
	install -m 0644 $(DOCS) '$(DESTDIR)$(DOCDIR)/'
	install -d '$(DESTDIR)$(DOCDIR)/monitoring'
	install -m 0644 monitoring/cairn.rules.yml monitoring/grafana-dashboard.json '$(DESTDIR)$(DOCDIR)/monitoring/'
	install -d -m 0755 '$(DESTDIR)$(SYSCONFDIR)'
	install -m 0644 systemd/cairnd.toml.example '$(DESTDIR)$(SYSCONFDIR)/cairnd.toml.example'
	install -m 0644 systemd/cairnd-minimal.toml '$(DESTDIR)$(SYSCONFDIR)/cairnd-minimal.toml.example'
	[ -e '$(DESTDIR)$(SYSCONFDIR)/cairnd.toml' ] || \
	  install -m 0640 systemd/cairnd-minimal.toml '$(DESTDIR)$(SYSCONFDIR)/cairnd.toml'

# Removes what install put in place. $(SYSCONFDIR)/cairnd.toml stays when it was edited, and
# the repository and state under /var/lib/cairn are never touched.
uninstall:
	rm -f '$(DESTDIR)$(BINDIR)/cairnd' '$(DESTDIR)$(BINDIR)/cairn' '$(DESTDIR)$(UNITDIR)/cairnd.service'
	rm -rf '$(DESTDIR)$(OPTDIR)' '$(DESTDIR)$(DOCDIR)'
	rm -f '$(DESTDIR)$(SYSCONFDIR)/cairnd.toml.example' '$(DESTDIR)$(SYSCONFDIR)/cairnd-minimal.toml.example'
	if cmp -s systemd/cairnd-minimal.toml '$(DESTDIR)$(SYSCONFDIR)/cairnd.toml'; then \
	  rm -f '$(DESTDIR)$(SYSCONFDIR)/cairnd.toml'; fi
	-rmdir '$(DESTDIR)$(SYSCONFDIR)' 2>/dev/null
