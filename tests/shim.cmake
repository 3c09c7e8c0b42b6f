# SPDX-License-Identifier: Apache-2.0
# The LD_PRELOAD shim (preload/) and the CUDA loader (cuda/), against the fake driver.
# Included from tests/CMakeLists.txt.
set(_shim_tests ${CMAKE_CURRENT_SOURCE_DIR}/integration/shim)
set(_preload_src ${PROJECT_SOURCE_DIR}/preload/src)

add_executable(test_cuda unit/test_cuda.c)
target_link_libraries(test_cuda PRIVATE kvshare_cuda fakecuda PkgConfig::CRITERION)
add_test(NAME cuda_loader COMMAND test_cuda)
set_tests_properties(cuda_loader PROPERTIES
  ENVIRONMENT "LD_LIBRARY_PATH=${CMAKE_BINARY_DIR}/fakecuda")

if(NOT TARGET kvshare_preload)
  return()
endif()
pkg_check_modules(KVS_SHIM_CJSON REQUIRED IMPORTED_TARGET libcjson)

foreach(t env table)
  add_executable(test_shim_${t} unit/test_shim_${t}.c)
  target_include_directories(test_shim_${t} PRIVATE ${_preload_src})
  target_link_libraries(test_shim_${t} PRIVATE kvshare_preload_int PkgConfig::CRITERION)
  add_test(NAME shim_${t} COMMAND test_shim_${t})
endforeach()

# Two small libraries that prove dlsym(RTLD_NEXT) still means "after the
# caller" with the shim loaded.
add_library(kvs_probe_next_a SHARED ${_shim_tests}/probe_next_a.c)
add_library(kvs_probe_next_b SHARED ${_shim_tests}/probe_next_b.c)
target_link_libraries(kvs_probe_next_a PRIVATE ${CMAKE_DL_LIBS})

# The probe, reaching the fake driver the three ways real programs do:
# linked to it, or by dlopen (then dlsym or cuGetProcAddress_v2).
add_executable(shim_probe_direct ${_shim_tests}/shim_probe.c)
target_compile_definitions(shim_probe_direct PRIVATE KVS_PROBE_LINKED=1)
target_link_libraries(shim_probe_direct PRIVATE fakecuda kvs_probe_next_a kvs_probe_next_b
                      ${CMAKE_DL_LIBS} Threads::Threads)
target_include_directories(shim_probe_direct PRIVATE ${PROJECT_SOURCE_DIR}/preload/include)
add_executable(shim_probe_dl ${_shim_tests}/shim_probe.c)
target_link_libraries(shim_probe_dl PRIVATE ${CMAKE_DL_LIBS} Threads::Threads)
target_include_directories(shim_probe_dl PRIVATE
  ${PROJECT_SOURCE_DIR}/preload/include ${CMAKE_CURRENT_SOURCE_DIR}/fakecuda
  ${PROJECT_SOURCE_DIR}/cuda/include ${PROJECT_SOURCE_DIR}/libkvshare/include)

add_executable(test_shim unit/test_shim.c)
target_link_libraries(test_shim PRIVATE PkgConfig::CRITERION PkgConfig::KVS_SHIM_CJSON)
add_dependencies(test_shim kvshare_preload shim_probe_direct shim_probe_dl fakecuda)
target_compile_definitions(test_shim PRIVATE
  KVS_TEST_SHIM="$<TARGET_FILE:kvshare_preload>"
  KVS_TEST_PROBE_DIRECT="$<TARGET_FILE:shim_probe_direct>"
  KVS_TEST_PROBE_DL="$<TARGET_FILE:shim_probe_dl>"
  KVS_TEST_FAKECUDA_DIR="${CMAKE_BINARY_DIR}/fakecuda"
  KVS_TEST_ASAN_RUNTIME="${KVS_ASAN_RUNTIME}"
  KVS_TEST_LSAN_FORK_SUPP="${_shim_tests}/lsan_fork.supp")
add_test(NAME shim COMMAND test_shim)

# The vLLM connector's preload_ctx() against the lazy shim: libkvshare
# appears at kvs_preload_get_ctx, and the connector shares that copy.
if(KVS_SYS_PYTHON)
  set(_shim_py_preload "$<TARGET_FILE:kvshare_preload>")
  set(_shim_py_env "")
  if(KVS_ASAN_RUNTIME)
    set(_shim_py_preload "${KVS_ASAN_RUNTIME}:$<TARGET_FILE:kvshare_preload>")
    set(_shim_py_env "ASAN_OPTIONS=detect_leaks=0")
  endif()
  add_test(NAME shim_preload_ctx
           COMMAND ${CMAKE_COMMAND} -E env --unset=KVSHARE_LIBRARY --unset=KVSHARE_LISTEN
                   --unset=KVSHARE_DISABLE "LD_PRELOAD=${_shim_py_preload}" ${_shim_py_env}
                   ${KVS_SYS_PYTHON} -B ${_shim_tests}/preload_ctx.py
                   ${PROJECT_SOURCE_DIR}/connectors/vllm)
  set_tests_properties(shim_preload_ctx PROPERTIES TIMEOUT 60)
endif()

# Real GPU: skipped (exit 77) where there is no real driver.
add_executable(test_gpu_shim gpu/test_gpu_shim.c)
target_link_libraries(test_gpu_shim PRIVATE ${CMAKE_DL_LIBS})
target_include_directories(test_gpu_shim PRIVATE
  ${PROJECT_SOURCE_DIR}/preload/include ${PROJECT_SOURCE_DIR}/cuda/include
  ${PROJECT_SOURCE_DIR}/libkvshare/include)
target_compile_definitions(test_gpu_shim PRIVATE
  KVS_TEST_SHIM="$<TARGET_FILE:kvshare_preload>"
  KVS_TEST_ASAN_RUNTIME="${KVS_ASAN_RUNTIME}")
add_dependencies(test_gpu_shim kvshare_preload)
add_test(NAME gpu_shim COMMAND test_gpu_shim)
set_tests_properties(gpu_shim PROPERTIES SKIP_RETURN_CODE 77)

# Real GPU: VMM export/import between two processes (the same-host CUDA path);
# skipped (exit 77) where there is no real driver.
add_executable(test_gpu_vmm gpu/test_gpu_vmm.c)
target_link_libraries(test_gpu_vmm PRIVATE kvshare_cuda kvshare ${CMAKE_DL_LIBS})
add_test(NAME gpu_vmm COMMAND test_gpu_vmm)
set_tests_properties(gpu_vmm PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 120)
