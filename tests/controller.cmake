# SPDX-License-Identifier: Apache-2.0
# The controller (k8s/controller): its pure parts' unit tests, the webhook and the reconciler
# as processes, and the manifests (k8s/). Included from tests/CMakeLists.txt.
set(_kvsc_src ${PROJECT_SOURCE_DIR}/k8s/controller)

if(KVS_FUZZ AND TARGET kvsc_core)
  add_executable(fuzz_admission fuzz/fuzz_admission.c ${_kvsc_src}/review.c
                 ${_kvsc_src}/inject.c ${_kvsc_src}/metrics.c ${_kvsc_src}/names.c)
  target_include_directories(fuzz_admission PRIVATE ${_kvsc_src})
  target_compile_definitions(fuzz_admission PRIVATE KVSC_VERSION="${PROJECT_VERSION}")
  target_compile_options(fuzz_admission PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_options(fuzz_admission PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(fuzz_admission PRIVATE PkgConfig::CJSON PkgConfig::OPENSSL
                        kvs_util)
endif()

if(NOT BUILD_TESTING)
  return()
endif()

# The manifests: kubectl may be missing on CI machines; the tests then skip (exit 77) and
# say why.
if(KVS_SYS_PYTHON)
  find_program(KVSC_KUBECTL kubectl)
  foreach(t controller_manifests:manifests reconcile_manifests:reconcile_manifests)
    string(REPLACE ":" ";" t "${t}")
    list(GET t 0 name)
    list(GET t 1 script)
    add_test(NAME ${name}
             COMMAND ${KVS_SYS_PYTHON}
                     ${CMAKE_CURRENT_SOURCE_DIR}/integration/controller/test_${script}.py
                     --kubectl "${KVSC_KUBECTL}" --root ${PROJECT_SOURCE_DIR})
    set_tests_properties(${name} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 60)
  endforeach()
endif()

if(NOT TARGET kvshare-controller)
  return()
endif()

foreach(t webhook_review webhook_inject webhook_metrics)
  add_executable(test_${t} unit/test_${t}.c)
  target_include_directories(test_${t} PRIVATE ${_kvsc_src})
  target_link_libraries(test_${t} PRIVATE kvsc_core PkgConfig::CRITERION)
  target_compile_definitions(test_${t} PRIVATE
    KVSC_FIXTURES="${CMAKE_CURRENT_SOURCE_DIR}/fixtures/admission")
  add_test(NAME ${t} COMMAND test_${t} --jobs 1)
  set_tests_properties(${t} PROPERTIES TIMEOUT 60)
endforeach()
foreach(t reconcile_build reconcile_util)
  add_executable(test_${t} unit/test_${t}.c)
  target_include_directories(test_${t} PRIVATE ${_kvsc_src})
  target_link_libraries(test_${t} PRIVATE kvsc_rec_core PkgConfig::CRITERION)
  add_test(NAME ${t} COMMAND test_${t} --jobs 1)
  set_tests_properties(${t} PROPERTIES TIMEOUT 60)
endforeach()

# Integration tests run Debian's python3: only it sees python3-jsonpatch.
find_program(KVSC_CURL curl)
find_program(KVSC_OPENSSL openssl)
if(KVS_SYS_PYTHON AND KVSC_CURL AND KVSC_OPENSSL)
  foreach(t webhook_https webhook_cert_reload webhook_cli webhook_body_budget
            webhook_sigterm_churn)
    add_test(NAME ${t}
             COMMAND ${KVS_SYS_PYTHON}
                     ${CMAKE_CURRENT_SOURCE_DIR}/integration/controller/test_${t}.py
                     --controller $<TARGET_FILE:kvshare-controller>
                     --curl ${KVSC_CURL} --openssl ${KVSC_OPENSSL}
                     --fixtures ${CMAKE_CURRENT_SOURCE_DIR}/fixtures/admission)
    set_tests_properties(${t} PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77)
  endforeach()
  # The reconciler against a fake API server (kube_fake.py: http.server + ssl).
  foreach(t reconcile reconcile_faults)
    add_test(NAME ${t}
             COMMAND ${KVS_SYS_PYTHON}
                     ${CMAKE_CURRENT_SOURCE_DIR}/integration/controller/test_${t}.py
                     --controller $<TARGET_FILE:kvshare-controller> --openssl ${KVSC_OPENSSL})
    set_tests_properties(${t} PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77)
  endforeach()
else()
  message(STATUS "kvshare: controller integration tests off (need /usr/bin/python3, curl, openssl)")
endif()
