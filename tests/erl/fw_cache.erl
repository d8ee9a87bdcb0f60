%% A registered gen_server on the host under a dist policy: the "cache"
%% a restricted peer may use (tests/firewall.rs).
-module(fw_cache).
-behaviour(gen_server).
-export([start/0, init/1, handle_call/3, handle_cast/2, handle_info/2]).

start() -> gen_server:start({local, cache}, ?MODULE, #{}, []).

init(S) -> {ok, S}.

handle_call({put, K, V}, _From, S) -> {reply, ok, S#{K => V}};
handle_call({get, K}, _From, S) -> {reply, maps:get(K, S, undefined), S};
handle_call(_, _From, S) -> {reply, unknown, S}.

handle_cast({put, K, V}, S) -> {noreply, S#{K => V}};
handle_cast(_, S) -> {noreply, S}.

handle_info({put, K, V}, S) -> {noreply, S#{K => V}};
handle_info(_, S) -> {noreply, S}.
