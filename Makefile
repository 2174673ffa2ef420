# Two commands matter (see README):  `make demo` runs the main job, `make test` runs the tests.
# Everything else here builds the environment they need, idempotently: a target is redone only
# when what it depends on changed.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
STAMPS := $(VENV)/.stamps
PYVER := $(shell $(PYTHON) -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')
SITE := $(VENV)/lib/$(PYVER)/site-packages
MSG_BUILD := $(CURDIR)/build/interfaces
INTERFACES := $(wildcard msg/*.msg srv/*.srv)

.PHONY: venv test lint demo bench clean

venv: $(STAMPS)/interfaces

# Pinned dependencies (requirements.txt). torch/torchvision come from this machine's wheel cache.
$(STAMPS)/deps: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade 'pip>=24' 'setuptools>=70' wheel
	$(PY) -m pip install --quiet -r requirements.txt
	@mkdir -p $(STAMPS) && touch $@

# The hand-written package stays in the source tree (one copy, never stale): a compat-mode
# editable install puts the repository on sys.path and installs the console scripts.
$(STAMPS)/dev-install: $(STAMPS)/deps setup.py
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	@touch $@

# The generated interfaces (boq_ros.msg, boq_ros.srv) are built with the ROS wheels' cmake tooling
# and installed into the venv prefix, minus the generated boq_ros/__init__.py: what remains is a
# portion of the package that boq_ros/__init__.py (extend_path) joins to the source tree.
$(STAMPS)/interfaces: $(STAMPS)/dev-install CMakeLists.txt package.xml $(INTERFACES)
	@command -v cmake >/dev/null || { echo 'cmake is required: apt-get install cmake g++'; exit 1; }
	$(PY) scripts/fix_ros_wheel_cmake.py $(VENV)
	rm -rf $(MSG_BUILD) && mkdir -p $(MSG_BUILD)
	cd $(MSG_BUILD) && AMENT_PREFIX_PATH=$(VENV) PATH=$(VENV)/bin:$$PATH cmake $(CURDIR) \
	  -DCMAKE_PREFIX_PATH=$(VENV) -DCMAKE_INSTALL_PREFIX=$(VENV) -DPython3_EXECUTABLE=$(PY) \
	  -DBOQ_ROS_INTERFACES_ONLY=ON -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release > cmake.log \
	  || { cat cmake.log; exit 1; }
	cd $(MSG_BUILD) && AMENT_PREFIX_PATH=$(VENV) PATH=$(VENV)/bin:$$PATH cmake --build . -j2 > build.log \
	  && cmake --install . > install.log || { cat build.log; exit 1; }
	rm -f $(SITE)/boq_ros/__init__.py
	@touch $@

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: venv
	@$(PY) -m pytest test; status=$$?; \
	if [ $$status -eq 5 ]; then echo 'make test: pytest collected no tests'; exit 1; fi; \
	exit $$status

lint: venv
	$(PY) -m pytest test/test_lint.py

demo: venv
	$(PY) -m boq_ros.cli demo

bench: venv
	@echo "Benchmarks: see benchmarks/README.md"

clean:
	rm -rf $(VENV) build install log
