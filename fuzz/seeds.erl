%% Seed corpora for the fuzz targets, from what OTP itself sends: real
%% terms (term_to_binary, as the distribution encodes them after a header
%% with no atom cache), whole distribution frames of the kernel's own
%% protocols, the handshake's send_name, EPMD requests and answers.
%% Run by scripts/fuzz.sh: erl -noshell -s seeds run DIR -s init stop
-module(seeds).
-export([run/1]).

run([Dir]) ->
    D = Dir,
    Me = self(),
    Ref = make_ref(),
    Alias = alias(),
    Fun = fun(X) -> {X, Me} end,
    Terms = [ok, 42, -7, 1 bsl 70, 3.14, "chars", <<"bin">>, <<1:3>>, [], [a | b],
             {}, {a, [1, 2], #{k => v, Me => Ref}}, Me, Ref, Alias, Fun, fun lists:map/2,
             hd(erlang:ports()), {'$gen_call', {Me, [alias | Alias]}, {is_auth, node()}},
             {'$gen_cast', {init_connect, {8, 1}, node(), {locker, no_longer_a_pid, [], Me}}},
             {discover, Me}, {'$gen_cast', {sync, Me, [{grp, [Me]}]}},
             {io_request, Me, Ref, {put_chars, unicode, io_lib, format, ["~p~n", [x]]}},
             {Me, features_request}, {features_reply, node(), [erpc]},
             lists:seq(1, 300), binary:copy(<<7>>, 70000)],
    Ctl = [{22, Me, Me}, {6, Me, '', net_kernel}, {6, Me, '', global_name_server},
           {6, Me, '', pg}, {6, Me, '', rex}, {6, Me, '', cache},
           {29, Ref, Me, Me, {erlang, apply, 2}, [monitor]}, {19, Me, cache, Ref},
           {20, Me, Me, Ref}, {33, Me, Alias}, {1, Me, Me}, {3, Me, Me, kill},
           {37, 8, Me, cache}, {37, 4, Me, Alias}, {31, Ref, Me, 0, Me}],
    put(n, 0),
    [file(D, "etf", [0 | body(T)]) || T <- Terms],
    [file(D, "etf", [13 | body(T)]) || T <- Terms],
    [begin
         F = iolist_to_binary([131, 68, 0, body(C), body(M)]),
         file(D, "firewall", [1, <<(byte_size(F)):32>>, F]),
         file(D, "firewall", [7, <<(byte_size(F)):32>>, F, <<0:32>>])
     end || C <- Ctl, M <- lists:sublist(Terms, 18, 10)],
    Big = body(binary:copy(<<1>>, 200000)),
    Head = body({6, Me, '', cache}),
    Whole = iolist_to_binary([Head, Big]),
    <<P1:1000/binary, P2:100000/binary, P3/binary>> = Whole,
    Frag = fun(Tag, N, Cache, Part) ->
                   B = iolist_to_binary([131, Tag, <<1:64, N:64>>, Cache, Part]),
                   [<<(byte_size(B)):32>>, B]
           end,
    file(D, "firewall", [255, Frag(69, 3, [0], P1), Frag(70, 2, [], P2), Frag(70, 1, [], P3)]),
    Name = atom_to_binary(node()),
    SendName = <<$N, 16#1ffffffff:64, 7:32, (byte_size(Name)):16, Name/binary>>,
    file(D, "handshake", [<<(byte_size(SendName)):16>>, SendName]),
    Old = <<$n, 6:16, 16#3ffff:32, Name/binary>>,
    file(D, "handshake", [<<(byte_size(Old)):16>>, Old]),
    file(D, "handshake", [<<3:16>>, "sok"]),
    Alive = <<120, 4321:16, 77, 0, 6:16, 6:16, 1:16, "a", 0:16>>,
    file(D, "epmd", [<<(byte_size(Alive)):16>>, Alive]),
    file(D, "epmd", [<<2:16>>, 122, "a"]),
    file(D, "epmd", [<<1:16>>, 110]),
    file(D, "epmd", <<119, 0, 4321:16, 77, 0, 6:16, 6:16, 1:16, "a", 0:16>>),
    file(D, "epmd", [<<4369:32>>, "name a at port 4321\n"]),
    file(D, "preface", ["EMSH", 1, 1, 1, "a"]),
    file(D, "preface", ["EMSH", 1, 2, 0]),
    file(D, "preface", ["EMSH", 1, 3, 1, "b", 0]),
    file(D, "preface", ["EMSH", 1, 4, 14, "hosta:4370", 0, 1, 5, "hosta", 10, "hosta:4370"]),
    file(D, "preface", <<0, 77, 0, 6:16, 6:16, 0:16>>),
    file(D, "record", [0]),
    file(D, "record", [3, binary:copy(<<"distribution frames">>, 20)]),
    ok.

%% A term as it follows a distribution header: no version byte.
body(T) ->
    <<131, B/binary>> = term_to_binary(T, [{minor_version, 2}]),
    B.

file(Dir, Target, Bytes) ->
    N = get(n) + 1,
    put(n, N),
    Path = filename:join([Dir, Target, "otp-" ++ integer_to_list(N)]),
    ok = filelib:ensure_dir(Path),
    ok = file:write_file(Path, Bytes).
