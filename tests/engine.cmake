# SPDX-License-Identifier: Apache-2.0
# The example engine (examples/): its unit tests linked and through dlopen, the command end
# to end, and `kvshare demo`. Included from tests/CMakeLists.txt.
if(NOT TARGET kvs_engine)
  return()
endif()

add_executable(test_engine unit/test_engine.c)
target_link_libraries(test_engine PRIVATE kvs_engine_linked PkgConfig::CRITERION)
add_test(NAME test_engine COMMAND test_engine --jobs=1)
set_tests_properties(test_engine PROPERTIES TIMEOUT 300 LABELS "unit;engine")

# The same tests again through dlopen: this binary links no libkvshare and
# loads the one just built (or $KVSHARE_ENGINE_LIB), which proves an engine
# can adopt kvshare at run time.
add_executable(test_engine_dlopen unit/test_engine.c)
target_link_libraries(test_engine_dlopen PRIVATE kvs_engine PkgConfig::CRITERION)
target_compile_definitions(test_engine_dlopen PRIVATE KVSE_DLOPEN
                           KVSE_LIBKVSHARE_PATH="$<TARGET_FILE:kvshare>")
add_dependencies(test_engine_dlopen kvshare)
add_test(NAME test_engine_dlopen COMMAND test_engine_dlopen --jobs=1)
set_tests_properties(test_engine_dlopen PROPERTIES TIMEOUT 300 LABELS "unit;engine")

# The command end to end in one process: fetched and recomputed tokens agree.
add_test(NAME engine_cli_both
         COMMAND kvshare-engine --prompt-tokens 100 --decode 8 --layers 2 --d-model 64
                 --vocab 512 --ffn 128 --head-dim 16 --check)
add_test(NAME engine_cli_dlopen
         COMMAND kvshare-engine --prompt-tokens 100 --decode 8 --layers 2 --d-model 64
                 --vocab 512 --ffn 128 --head-dim 16 --check --dlopen=$<TARGET_FILE:kvshare>)
set_tests_properties(engine_cli_both engine_cli_dlopen PROPERTIES TIMEOUT 120
                     LABELS "unit;engine")

# `kvshare demo` end to end at a small size: real prefill, decode, pool and
# recompute processes on loopback over UCX; identical tokens, clear errors,
# nothing left behind. The demo finds the build's kvshare-engine.
if(TARGET kvshare_cli AND TARGET PkgConfig::UCX)
  add_test(NAME demo_e2e
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/integration/demo/demo.sh
                   $<TARGET_FILE:kvshare_cli>)
  set_tests_properties(demo_e2e PROPERTIES TIMEOUT 300 LABELS integration)

  # The demo with TP ranks and KV layouts (issue 13): demo_tp.sh runs it at a
  # small size and checks identical tokens, the per-rank bytes adding up to
  # the prompt's KV once, the JSON fields and that nothing is left behind.
  foreach(case "tp2_tp2:--prefill-tp;2;--decode-tp;2"
                "tp1_hnd:--prefill-kv-layout;hnd;--decode-kv-layout;hnd"
                "tp4_hnd_replicated:--prefill-tp;4;--decode-tp;4;--prefill-kv-layout;hnd;--decode-kv-layout;hnd"
                "mixed_tp2_tp1:--prefill-tp;2;--decode-tp;1"
                "mixed_tp1_tp2_hnd:--prefill-tp;1;--decode-tp;2;--decode-kv-layout;hnd"
                "mixed_nhd_hnd:--decode-kv-layout;hnd")
    string(REPLACE ":" ";" parts "${case}")
    list(GET parts 0 name)
    list(REMOVE_AT parts 0)
    add_test(NAME demo_${name}
             COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/integration/demo/demo_tp.sh
                     $<TARGET_FILE:kvshare_cli> ${parts})
    set_tests_properties(demo_${name} PROPERTIES TIMEOUT 300 LABELS integration)
  endforeach()
  # Bad TP options are refused with the flag's name, before anything starts.
  add_test(NAME demo_tp_errors
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/integration/demo/demo_tp.sh
                   $<TARGET_FILE:kvshare_cli> --errors $<TARGET_FILE:kvshare-engine>)
  set_tests_properties(demo_tp_errors PROPERTIES TIMEOUT 60 LABELS integration)
endif()
