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
$(STAMPS)/deps: requirements.txt requirements-features.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade 'pip>=24' 'setuptools>=70' wheel
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-features.txt
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

# Test-only tools for a machine without a ROS install (`ros2 launch`, `ros2 run`, `ros2 lifecycle`,
# `ros2 param`, `ros2 topic`): the unmodified pure-Python Jazzy sources in
# ../shared/third_party/ros2-jazzy (built from a writable copy) plus composition_interfaces, which
# launch_ros imports, generated into the venv prefix like the package's own interfaces. Their PyPI
# dependencies (osrf-pycommon, psutil) are pinned in requirements.txt. Nothing at run time needs
# them; without the folder this does nothing and the tests that need them skip.
LAUNCH_TOOLS_SRC := $(abspath $(CURDIR)/../shared/third_party/ros2-jazzy)
LAUNCH_TOOLS := rosidl_runtime_py launch launch_xml launch_yaml launch_ros ros2cli ros2pkg \
  ros2run ros2node ros2service ros2topic ros2lifecycle ros2param ros2launch
LAUNCH_BUILD := $(CURDIR)/build/launch_tools

.PHONY: launch-tools
ifneq ($(wildcard $(LAUNCH_TOOLS_SRC)/README.md),)
launch-tools: $(STAMPS)/launch-tools
$(STAMPS)/launch-tools: $(STAMPS)/deps $(LAUNCH_TOOLS_SRC)/README.md
	rm -rf $(LAUNCH_BUILD) && mkdir -p $(LAUNCH_BUILD)/composition_build
	cp -r $(addprefix $(LAUNCH_TOOLS_SRC)/,$(LAUNCH_TOOLS) composition_interfaces) $(LAUNCH_BUILD)/
	chmod -R u+w $(LAUNCH_BUILD)
	$(PY) -m pip install --no-deps --no-build-isolation $(addprefix $(LAUNCH_BUILD)/,$(LAUNCH_TOOLS)) \
	  > $(LAUNCH_BUILD)/pip.log 2>&1 || { cat $(LAUNCH_BUILD)/pip.log; exit 1; }
	$(PY) scripts/fix_ros_wheel_cmake.py $(VENV)
	cd $(LAUNCH_BUILD)/composition_build && AMENT_PREFIX_PATH=$(VENV) PATH=$(VENV)/bin:$$PATH \
	  cmake $(LAUNCH_BUILD)/composition_interfaces -DCMAKE_PREFIX_PATH=$(VENV) \
	  -DCMAKE_INSTALL_PREFIX=$(VENV) -DPython3_EXECUTABLE=$(PY) -DBUILD_TESTING=OFF \
	  -DCMAKE_BUILD_TYPE=Release > cmake.log || { cat cmake.log; exit 1; }
	cd $(LAUNCH_BUILD)/composition_build && AMENT_PREFIX_PATH=$(VENV) PATH=$(VENV)/bin:$$PATH \
	  cmake --build . -j2 > build.log && cmake --install . > install.log || { cat build.log; exit 1; }
	@touch $@
else
launch-tools:
	@echo 'launch-tools: $(LAUNCH_TOOLS_SRC) not found: nothing installed, the ros2 launch tests skip'
endif

# The Jazzy lane (`make test` runs the ROS tests on it too): .venv-jazzy holds the Jazzy `ros-*`
# wheels of requirements-jazzy.txt and sees the Kilted venv's non-ROS packages (torch, faiss,
# pytest, colcon, ...) through links (scripts/share_site_packages.py), so it costs no second copy
# of them; the package's interfaces are generated against the Jazzy wheels as for `venv`. A change
# of either lock rebuilds it from scratch (the ROS wheels come from pip's cache).
JAZZY_VENV := $(CURDIR)/.venv-jazzy
JAZZY_PY := $(JAZZY_VENV)/bin/python
JAZZY_STAMPS := $(JAZZY_VENV)/.stamps
JAZZY_SITE := $(JAZZY_VENV)/lib/$(PYVER)/site-packages
JAZZY_MSG_BUILD := $(CURDIR)/build/interfaces-jazzy

.PHONY: venv-jazzy test-jazzy
venv-jazzy: $(JAZZY_STAMPS)/interfaces

$(JAZZY_STAMPS)/deps: requirements-jazzy.txt $(STAMPS)/deps scripts/share_site_packages.py
	rm -rf $(JAZZY_VENV) && $(PYTHON) -m venv $(JAZZY_VENV) && mkdir -p $(JAZZY_STAMPS)
	$(JAZZY_PY) -m pip install --quiet $$($(PY) -m pip freeze --all | grep -iE '^(pip|setuptools|wheel)==') \
	  > $(JAZZY_STAMPS)/pip.log 2>&1 || { cat $(JAZZY_STAMPS)/pip.log; exit 1; }
	$(JAZZY_PY) scripts/share_site_packages.py requirements.txt $(VENV) $(JAZZY_VENV)
	$(JAZZY_PY) -m pip install --no-deps -r requirements-jazzy.txt \
	  >> $(JAZZY_STAMPS)/pip.log 2>&1 || { cat $(JAZZY_STAMPS)/pip.log; exit 1; }
	$(JAZZY_PY) -m pip check
	@touch $@

$(JAZZY_STAMPS)/dev-install: $(JAZZY_STAMPS)/deps setup.py
	$(JAZZY_PY) -m pip install --quiet --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	@touch $@

$(JAZZY_STAMPS)/interfaces: $(JAZZY_STAMPS)/dev-install CMakeLists.txt package.xml $(INTERFACES)
	@command -v cmake >/dev/null || { echo 'cmake is required: apt-get install cmake g++'; exit 1; }
	$(JAZZY_PY) scripts/fix_ros_wheel_cmake.py $(JAZZY_VENV)
	rm -rf $(JAZZY_MSG_BUILD) && mkdir -p $(JAZZY_MSG_BUILD)
	cd $(JAZZY_MSG_BUILD) && AMENT_PREFIX_PATH=$(JAZZY_VENV) PATH=$(JAZZY_VENV)/bin:$$PATH cmake $(CURDIR) \
	  -DCMAKE_PREFIX_PATH=$(JAZZY_VENV) -DCMAKE_INSTALL_PREFIX=$(JAZZY_VENV) -DPython3_EXECUTABLE=$(JAZZY_PY) \
	  -DBOQ_ROS_INTERFACES_ONLY=ON -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release > cmake.log \
	  || { cat cmake.log; exit 1; }
	cd $(JAZZY_MSG_BUILD) && AMENT_PREFIX_PATH=$(JAZZY_VENV) PATH=$(JAZZY_VENV)/bin:$$PATH cmake --build . -j2 > build.log \
	  && cmake --install . > install.log || { cat build.log; exit 1; }
	rm -f $(JAZZY_SITE)/boq_ros/__init__.py
	@touch $@

# The launch tools (`make launch-tools`, Jazzy sources) in the Jazzy lane too, from its own copy.
JAZZY_LAUNCH_BUILD := $(CURDIR)/build/launch_tools_jazzy
ifneq ($(wildcard $(LAUNCH_TOOLS_SRC)/README.md),)
venv-jazzy: $(JAZZY_STAMPS)/launch-tools
$(JAZZY_STAMPS)/launch-tools: $(JAZZY_STAMPS)/interfaces $(LAUNCH_TOOLS_SRC)/README.md
	rm -rf $(JAZZY_LAUNCH_BUILD) && mkdir -p $(JAZZY_LAUNCH_BUILD)/composition_build
	cp -r $(addprefix $(LAUNCH_TOOLS_SRC)/,$(LAUNCH_TOOLS) composition_interfaces) $(JAZZY_LAUNCH_BUILD)/
	chmod -R u+w $(JAZZY_LAUNCH_BUILD)
	$(JAZZY_PY) -m pip install --no-deps --no-build-isolation $(addprefix $(JAZZY_LAUNCH_BUILD)/,$(LAUNCH_TOOLS)) \
	  > $(JAZZY_LAUNCH_BUILD)/pip.log 2>&1 || { cat $(JAZZY_LAUNCH_BUILD)/pip.log; exit 1; }
	cd $(JAZZY_LAUNCH_BUILD)/composition_build && AMENT_PREFIX_PATH=$(JAZZY_VENV) PATH=$(JAZZY_VENV)/bin:$$PATH \
	  cmake $(JAZZY_LAUNCH_BUILD)/composition_interfaces -DCMAKE_PREFIX_PATH=$(JAZZY_VENV) \
	  -DCMAKE_INSTALL_PREFIX=$(JAZZY_VENV) -DPython3_EXECUTABLE=$(JAZZY_PY) -DBUILD_TESTING=OFF \
	  -DCMAKE_BUILD_TYPE=Release > cmake.log || { cat cmake.log; exit 1; }
	cd $(JAZZY_LAUNCH_BUILD)/composition_build && AMENT_PREFIX_PATH=$(JAZZY_VENV) PATH=$(JAZZY_VENV)/bin:$$PATH \
	  cmake --build . -j2 > build.log && cmake --install . > install.log || { cat build.log; exit 1; }
	@touch $@
endif

# Test-only interfaces of the SLAM backends the output adapters speak to (test/interfaces/):
# pose_graph_tools_msgs and rtabmap_msgs, their .msg/.srv files copied unchanged from
# ../shared/reference/backend_interfaces (Info.msg from test/interfaces), and tf2_msgs'
# TFMessage (pose_graph_node's /tf; the registry's ROS wheels lack it), built like the package's
# own interfaces into both venvs. Nothing at run time needs them; without the folder this does
# nothing and the tests that need them skip.
BACKEND_SRC := $(abspath $(CURDIR)/../shared/reference/backend_interfaces)
TEST_INTERFACES := pose_graph_tools_msgs rtabmap_msgs tf2_msgs
TEST_INTERFACE_FILES := $(wildcard test/interfaces/*/package.xml test/interfaces/*/CMakeLists.txt \
  test/interfaces/*/msg/*.msg $(BACKEND_SRC)/*/msg/*.msg $(BACKEND_SRC)/*/srv/*.srv)

# $(call build-test-interfaces,VENV,BUILD_DIR): each package's sources assembled in
# BUILD_DIR/<pkg>/src (the backend's files, then ours), configured, built, installed into VENV.
define build-test-interfaces
	rm -rf $(2) && mkdir -p $(2)
	$(1)/bin/python scripts/fix_ros_wheel_cmake.py $(1)
	@set -e; for pkg in $(TEST_INTERFACES); do \
	  echo "test-interfaces: $$pkg into $(1)"; \
	  mkdir -p $(2)/$$pkg/build $(2)/$$pkg/src; \
	  if [ -d $(BACKEND_SRC)/$$pkg ]; then cp -r $(BACKEND_SRC)/$$pkg/. $(2)/$$pkg/src/; fi; \
	  chmod -R u+w $(2)/$$pkg/src; \
	  cp -r test/interfaces/$$pkg/. $(2)/$$pkg/src/; \
	  cd $(2)/$$pkg/build; \
	  AMENT_PREFIX_PATH=$(1) PATH=$(1)/bin:$$PATH cmake $(2)/$$pkg/src -DCMAKE_PREFIX_PATH=$(1) \
	    -DCMAKE_INSTALL_PREFIX=$(1) -DPython3_EXECUTABLE=$(1)/bin/python -DBUILD_TESTING=OFF \
	    -DCMAKE_BUILD_TYPE=Release > cmake.log || { cat cmake.log; exit 1; }; \
	  AMENT_PREFIX_PATH=$(1) PATH=$(1)/bin:$$PATH cmake --build . -j2 > build.log \
	    && cmake --install . > install.log || { cat build.log; exit 1; }; \
	  cd $(CURDIR); \
	done
endef

.PHONY: test-interfaces
ifneq ($(wildcard $(BACKEND_SRC)/README.md),)
test-interfaces: $(STAMPS)/test-interfaces $(JAZZY_STAMPS)/test-interfaces
venv-jazzy: $(JAZZY_STAMPS)/test-interfaces
$(STAMPS)/test-interfaces: $(STAMPS)/deps $(TEST_INTERFACE_FILES)
	$(call build-test-interfaces,$(VENV),$(CURDIR)/build/test_interfaces)
	@touch $@
$(JAZZY_STAMPS)/test-interfaces: $(JAZZY_STAMPS)/deps $(TEST_INTERFACE_FILES)
	$(call build-test-interfaces,$(JAZZY_VENV),$(CURDIR)/build/test_interfaces_jazzy)
	@touch $@
else
test-interfaces:
	@echo 'test-interfaces: $(BACKEND_SRC) not found: nothing built, the backend adapter tests skip'
endif

# The tests that use the ROS runtime (marker `ros`, test/conftest.py: every DDS test, the colcon
# build, rclpy parameters and message conversion) on Jazzy. The bootstrap guard of the ROS wheels
# is cleared so that this venv's libraries are the ones put on LD_LIBRARY_PATH.
JAZZY_PYTEST := env -u _ROS_WHEELS_BOOTSTRAP_COMPLETE $(JAZZY_PY) -m pytest -m ros test
test-jazzy: venv-jazzy
	@$(JAZZY_PYTEST); status=$$?; \
	if [ $$status -eq 5 ]; then echo 'make test-jazzy: pytest collected no tests'; exit 1; fi; \
	exit $$status

# pytest exits 5 when it collected no test: that is a failure here, not a pass. Two lanes: the
# whole suite on Kilted (.venv), then the ROS tests on Jazzy (.venv-jazzy, built first); the
# Jazzy lane runs whatever the Kilted lane's result.
test: venv launch-tools test-interfaces
	@$(MAKE) --no-print-directory venv-jazzy
	@$(PY) -m pytest test; kilted=$$?; \
	if [ $$kilted -eq 5 ]; then echo 'make test: pytest collected no tests (Kilted)'; kilted=1; fi; \
	$(JAZZY_PYTEST); jazzy=$$?; \
	if [ $$jazzy -eq 5 ]; then echo 'make test: pytest collected no tests (Jazzy)'; jazzy=1; fi; \
	echo "make test: Kilted lane exit $$kilted, Jazzy lane exit $$jazzy"; \
	[ $$kilted -eq 0 ] && [ $$jazzy -eq 0 ]

lint: venv
	$(PY) -m pytest test/test_lint.py

demo: venv
	$(PY) -m boq_ros.cli demo

bench: venv
	@echo "Benchmarks: see benchmarks/README.md"

clean:
	rm -rf $(VENV) $(JAZZY_VENV) build install log
